"""The network contract every nnunet_ext architecture follows (nnU-Net's, as in dynamic-network-architectures).

A network is ``SegmentationNetwork(encoder, decoder)``:

- ``encoder(x) -> list[Tensor]``: the skips, finest first; the last one is the bottleneck.
- ``decoder(skips) -> Tensor | list[Tensor]``: logits at input resolution, or, with ``decoder.deep_supervision``
  on, one logit map per decoder level, highest resolution first.
- ``decoder(skips, return_features=True) -> (logits, features)`` also returns the last decoder feature map (the
  input of the final segmentation head), which the GuidedNet scheme needs.
- ``network.deep_supervision_scales``: per deep-supervision output, its size as a fraction of the input per axis;
  the trainers return it from ``_get_deep_supervision_scales()`` so targets and outputs always agree.

All segmentation heads are built whether or not deep supervision is on, so a network trained with it loads into
the one ``nnUNetv2_predict`` builds without it (nnU-Net's convention).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

Stride = Sequence[int]


def conv_dimension(conv_op: type[_ConvNd]) -> int:
    """2 for ``nn.Conv2d``, 3 for ``nn.Conv3d``."""
    dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
    if conv_op not in dims:
        raise ValueError(f"conv_op must be nn.Conv2d or nn.Conv3d, got {conv_op}")
    return dims[conv_op]


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, *S), 2D or 3D, in channels-last memory layout; values and shape unchanged.

    Convolutions propagate the layout of their input, so converting a network's input once makes every layer run
    channels-last. On CPU this is what makes depthwise large-kernel convolutions affordable: their backward pass in
    the default (contiguous) layout takes a slow path, an order of magnitude slower than the channels-last one
    (``python -m nnunet_ext.benchmark.memory_format``). On CUDA the same layout is kept on purpose: NHWC is the
    native layout of cuDNN's float16/bfloat16 tensor-core convolutions, depthwise ones included, and nnU-Net trains in
    float16 autocast there.
    """
    memory_format = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
    return x.contiguous(memory_format=memory_format)


def init_transformer_weights(module: nn.Module) -> None:
    """The ViT-family initialisation the official GCGLE-Net and GCtx-UNet code apply with ``network.apply``:
    Linear weights trunc_normal(std 0.02) with zero bias, LayerNorm (1, 0); other modules keep PyTorch's default."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def interpolation_mode(conv_op: type[_ConvNd]) -> str:
    """The linear interpolation mode matching ``conv_op``: bilinear in 2D, trilinear in 3D."""
    return {2: "bilinear", 3: "trilinear"}[conv_dimension(conv_op)]


def cumulative_scales(strides: Sequence[Stride]) -> list[list[float]]:
    """Output-size fractions of the levels reached by ``strides``: ``[1, 1/s1, 1/(s1 s2), ...]`` per axis.

    ``strides`` are the downsampling steps between consecutive levels (the first level has none).
    """
    dim = len(strides[0]) if strides else 1
    steps = np.vstack([np.ones(dim)] + [np.asarray(s, dtype=float) for s in strides])
    return [list(map(float, row)) for row in 1.0 / np.cumprod(steps, axis=0)]


class SegmentationDecoder(nn.Module, ABC):
    """Decoder with one segmentation head per level and nnU-Net's ``deep_supervision`` switch.

    Subclasses implement :meth:`decode_levels`; heads are ``seg_heads[i]`` for the i-th level produced, coarse
    to fine, the last one being the final (full-resolution) head.
    """

    def __init__(self, seg_heads: nn.ModuleList, level_scales: list[list[float]], deep_supervision: bool):
        super().__init__()
        if len(seg_heads) != len(level_scales):
            raise ValueError(f"{len(seg_heads)} segmentation heads for {len(level_scales)} decoder levels")
        self.seg_heads = seg_heads
        self.deep_supervision = deep_supervision
        self._level_scales = level_scales

    @property
    def deep_supervision_scales(self) -> list[list[float]]:
        """Size fraction of each deep-supervision output, highest resolution first."""
        return self._level_scales[::-1]

    @abstractmethod
    def decode_levels(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        """Feature maps of the decoder levels, coarse to fine, each the input of its segmentation head."""

    def forward(
        self, skips: list[torch.Tensor], return_features: bool = False
    ) -> torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]:
        levels = self.decode_levels(skips)
        if self.deep_supervision:
            logits = [head(features) for head, features in zip(self.seg_heads, levels)][::-1]
        else:
            logits = self.seg_heads[-1](levels[-1])
        return (logits, levels[-1]) if return_features else logits


class SegmentationNetwork(nn.Module):
    """``decoder(encoder(x))``; see the module docstring for the contract."""

    def __init__(self, encoder: nn.Module, decoder: SegmentationDecoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    @property
    def deep_supervision_scales(self) -> list[list[float]]:
        return self.decoder.deep_supervision_scales

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.decoder(self.encoder(x))

    def deep_supervision_head_parameters(self) -> int:
        """Number of parameters in the auxiliary (non-final) segmentation heads."""
        return sum(p.numel() for head in self.decoder.seg_heads[:-1] for p in head.parameters())
