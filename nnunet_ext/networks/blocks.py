"""Convolution units shared by several networks (CMUNeXt, MGCC's U-Net and ConvMixer), ``conv_op`` selecting 2D or
3D. Each maps (B, C_in, *S) -> (B, C_out, *S)."""

from __future__ import annotations

import torch
from dynamic_network_architectures.building_blocks.helper import get_matching_batchnorm
from torch import nn
from torch.nn.modules.conv import _ConvNd


class ConvBlock(nn.Sequential):
    """Conv 3x3 (bias) -> BN -> ReLU: the official ``conv_block``."""

    def __init__(self, in_channels: int, out_channels: int, conv_op: type[_ConvNd]):
        norm_op = get_matching_batchnorm(conv_op)
        super().__init__(conv_op(in_channels, out_channels, 3, padding=1), norm_op(out_channels), nn.ReLU(inplace=True))


class ConvGELUNorm(nn.Sequential):
    """Conv -> GELU -> BN, the activation-before-norm unit CMUNeXt uses everywhere else."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        conv_op: type[_ConvNd],
        kernel_size: int = 1,
        groups: int = 1,
    ):
        norm_op = get_matching_batchnorm(conv_op)
        conv = conv_op(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups)
        super().__init__(conv, nn.GELU(), norm_op(out_channels))


class Residual(nn.Module):
    """``x + fn(x)``."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x
