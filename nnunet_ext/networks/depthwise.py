"""Depthwise 2D convolution whose weight gradient is computed in blocks of channels.

On CPU, oneDNN's weight gradient of a depthwise convolution with a kernel larger than 3x3 slows down sharply
beyond a few hundred channels: for GCGLE-Net's Local Extraction Block (1536 channels, 14x14, 5x5, batch 4) it takes
20 ms where four blocks of 384 channels take 7 ms together (``python -m nnunet_ext.benchmark.kernels`` prints
the table). :class:`DepthwiseConv2d` is an ``nn.Conv2d`` (same parameters and state-dict names) whose backward
pass computes the weight gradient block by block; the forward pass and the input gradient are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_GRADIENT_BLOCK = 384
"""Channels per block of the weight gradient (measured fastest of 192-512 on the shapes above)."""
BLOCKWISE_ABOVE = 2 * WEIGHT_GRADIENT_BLOCK
"""Widths above which the blocks pay (1536 channels: 2.2-3.4x faster; 768: 0.8-1.5x over runs, so one call)."""


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def _convolution_backward(
    grad_output: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    padding: tuple[int, int],
    bias: bool,
    output_mask: list[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``aten.convolution_backward`` of a stride-1 depthwise convolution: (input, weight, bias) gradients."""
    return torch.ops.aten.convolution_backward(
        grad_output,
        x,
        weight,
        [weight.shape[0]] if bias else None,
        [1, 1],
        list(padding),
        [1, 1],
        False,
        [0, 0],
        weight.shape[0],
        output_mask,
    )


class _BlockwiseWeightGradient(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, padding, groups=C)``; backward: input and bias gradients in one call, the
    weight gradient per block of :data:`WEIGHT_GRADIENT_BLOCK` channels (each block's inputs made contiguous in
    the layout of the full tensor)."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int]
    ) -> torch.Tensor:
        # under autocast, run and save in the dtype autocast gives the convolution, so that the backward's
        # gradients and saved tensors agree (autograd casts each gradient back to its input's dtype)
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        with torch.autocast(device, enabled=False):
            return F.conv2d(x, weight, bias, padding=padding, groups=weight.shape[0])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, weight = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_input, _, grad_bias = _convolution_backward(
            grad_output, x, weight, ctx.padding, ctx.has_bias, [needs_input, False, needs_bias]
        )
        grad_weight = None
        if needs_weight:
            layout = _memory_format(x)
            blocks = [
                _convolution_backward(
                    grad_output[:, block].contiguous(memory_format=layout),
                    x[:, block].contiguous(memory_format=layout),
                    weight[block],
                    ctx.padding,
                    False,
                    [False, True, False],
                )[1]
                for block in (
                    slice(start, start + WEIGHT_GRADIENT_BLOCK)
                    for start in range(0, weight.shape[0], WEIGHT_GRADIENT_BLOCK)
                )
            ]
            grad_weight = torch.cat(blocks)
        return grad_input, grad_weight, grad_bias, None


class DepthwiseConv2d(nn.Conv2d):
    """Depthwise ``k x k`` convolution, stride 1, "same" padding; (N, C, H, W) -> (N, C, H, W).

    Equal to ``nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels, bias=bias)`` in parameters,
    outputs and gradients; with more than :data:`BLOCKWISE_ABOVE` channels and ``k > 3`` the weight gradient is
    computed in blocks of :data:`WEIGHT_GRADIENT_BLOCK` channels on the CPU (oneDNN's 3x3 kernel is fast at any
    width; other devices use one call).
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = True):
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=bias)
        self.blockwise_weight_gradient = kernel_size > 3 and channels > BLOCKWISE_ABOVE

    def weight_gradient_in_blocks(self, device_type: str) -> bool:
        """Whether the weight gradient is computed in blocks on a device of ``device_type``: only on the CPU (the
        slowdown is oneDNN's); on CUDA one cuDNN depthwise call, in any width."""
        return self.blockwise_weight_gradient and device_type == "cpu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.weight_gradient_in_blocks(x.device.type):
            return _BlockwiseWeightGradient.apply(x, self.weight, self.bias, self.padding)
        return super().forward(x)
