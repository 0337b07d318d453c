"""DepthwiseConv2d: an nn.Conv2d depthwise convolution whose weight gradient is computed in channel blocks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_ext.networks.depthwise import BLOCKWISE_ABOVE, WEIGHT_GRADIENT_BLOCK, DepthwiseConv2d


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("channels", [4 * WEIGHT_GRADIENT_BLOCK, BLOCKWISE_ABOVE + 1])
def test_gradients_equal_the_grouped_convolution(channels, memory_format, bias):
    torch.manual_seed(0)
    conv = DepthwiseConv2d(channels, 5, bias=bias).double()
    assert conv.blockwise_weight_gradient
    x = torch.randn(2, channels, 6, 7, dtype=torch.float64).contiguous(memory_format=memory_format)
    x_reference = x.clone().requires_grad_()
    weight = conv.weight.detach().clone().requires_grad_()
    bias_reference = conv.bias.detach().clone().requires_grad_() if bias else None
    expected = F.conv2d(x_reference, weight, bias_reference, padding=2, groups=channels)
    x.requires_grad_()
    out = conv(x)
    torch.testing.assert_close(out, expected)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    expected.backward(upstream)
    torch.testing.assert_close(x.grad, x_reference.grad)
    torch.testing.assert_close(conv.weight.grad, weight.grad)
    if bias:
        torch.testing.assert_close(conv.bias.grad, bias_reference.grad)


def test_only_the_requested_gradients():
    """A frozen input (weight gradient only) and a frozen weight (input gradient only) give the reference values."""
    torch.manual_seed(0)
    channels = BLOCKWISE_ABOVE + WEIGHT_GRADIENT_BLOCK
    conv = DepthwiseConv2d(channels, 5).double()
    x = torch.randn(1, channels, 4, 4, dtype=torch.float64)
    reference = conv.weight.detach().clone().requires_grad_()
    conv(x).sum().backward()
    F.conv2d(x, reference, conv.bias.detach(), padding=2, groups=channels).sum().backward()
    torch.testing.assert_close(conv.weight.grad, reference.grad)

    conv.requires_grad_(False)
    x_reference = x.clone().requires_grad_()
    x.requires_grad_()
    conv(x).sum().backward()
    F.conv2d(x_reference, conv.weight, conv.bias, padding=2, groups=channels).sum().backward()
    torch.testing.assert_close(x.grad, x_reference.grad)


def test_same_parameters_as_nn_conv2d_and_plain_path_where_not_needed():
    conv = DepthwiseConv2d(1536, 5, bias=False)
    reference = nn.Conv2d(1536, 1536, 5, padding=2, groups=1536, bias=False)
    assert isinstance(conv, nn.Conv2d)
    assert {k: v.shape for k, v in conv.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert not DepthwiseConv2d(1536, 3).blockwise_weight_gradient
    assert not DepthwiseConv2d(BLOCKWISE_ABOVE, 5).blockwise_weight_gradient
    assert DepthwiseConv2d(BLOCKWISE_ABOVE + 1, 5).blockwise_weight_gradient
    # blocks on the CPU only: on CUDA one cuDNN depthwise call in any width
    assert DepthwiseConv2d(BLOCKWISE_ABOVE + 1, 5).weight_gradient_in_blocks("cpu")
    assert not DepthwiseConv2d(BLOCKWISE_ABOVE + 1, 5).weight_gradient_in_blocks("cuda")
    assert not DepthwiseConv2d(BLOCKWISE_ABOVE, 5).weight_gradient_in_blocks("cpu")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_blockwise_path_under_autocast_matches_the_convolution_in_that_dtype(dtype):
    torch.manual_seed(0)
    channels = BLOCKWISE_ABOVE + WEIGHT_GRADIENT_BLOCK
    ours = DepthwiseConv2d(channels, 5)
    reference = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, channels, 6, 6)
    gradients = []
    for module in (ours, reference):
        x_ = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=dtype):
            out = module(x_)
        assert out.dtype == dtype
        out.float().square().mean().backward()
        gradients.append((out.float(), x_.grad, module.weight.grad, module.bias.grad))
    for ours_tensor, reference_tensor in zip(*gradients):
        assert ours_tensor.dtype == reference_tensor.dtype
        torch.testing.assert_close(ours_tensor, reference_tensor, rtol=2e-2, atol=2e-2)
