"""CMUNeXt: large-kernel depthwise conv U-Net with Skip-Fusion (Tang et al., ISBI 2024, arXiv 2308.01239).

Faithful to the official ``FengheTan9/CMUNeXt`` (``network/CMUNeXt.py``): stem conv block, one CMUNeXt block per
encoder stage (depthwise k x k residual, inverted bottleneck x4, activation *before* BatchNorm), bilinear
up-convolution and the Skip-Fusion block (grouped 3x3, groups=2) on ``cat(skip, up)``, 1x1 head.
Parameter counts equal the reference tables (``tests/test_cmunext.py``).

Generalisations (none changes the published 2D network):

- ``conv_op`` selects 2D or 3D (Conv3d, depthwise k^3, MaxPool3d, trilinear upsampling).
- ``input_channels`` and ``num_classes`` are honoured (the official factory functions ignore them).
- ``strides`` gives each stage's downsampling (max-pool kernel = stride; upsampling by the same factor), so
  anisotropic nnU-Net plans (e.g. no pooling along z in early stages) work; default 2 on every axis.
- A config with fewer stages (:meth:`CMUNeXtConfig.truncated`) serves patches too small for four poolings.
- With ``deep_supervision`` every decoder level gets a 1x1 head (the original has only the final one).

Implementation detail: the encoder converts its input to channels-last memory layout (same values), which every
layer then inherits; on CPU this makes the train step several times faster (see
:func:`~nnunet_ext.networks.common.to_channels_last`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import get_matching_pool_op
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_ext.networks.blocks import ConvBlock, ConvGELUNorm, Residual
from nnunet_ext.networks.common import (
    SegmentationDecoder,
    SegmentationNetwork,
    Stride,
    conv_dimension,
    cumulative_scales,
    interpolation_mode,
    to_channels_last,
)


@dataclass(frozen=True)
class CMUNeXtConfig:
    """Channels, CMUNeXt-block depth and depthwise kernel size of each of the five stages."""

    dims: tuple[int, ...]
    depths: tuple[int, ...]
    kernels: tuple[int, ...]

    def truncated(self, n_stages: int) -> CMUNeXtConfig:
        """The first ``n_stages`` stages of this config."""
        if not 2 <= n_stages <= len(self.dims):
            raise ValueError(f"CMUNeXt needs 2 to {len(self.dims)} stages, got {n_stages}")
        return CMUNeXtConfig(self.dims[:n_stages], self.depths[:n_stages], self.kernels[:n_stages])


CMUNEXT_VARIANTS: dict[str, CMUNeXtConfig] = {
    "cmunext": CMUNeXtConfig(dims=(16, 32, 128, 160, 256), depths=(1, 1, 1, 3, 1), kernels=(3, 3, 7, 7, 7)),
    "cmunext_s": CMUNeXtConfig(dims=(8, 16, 32, 64, 128), depths=(1, 1, 1, 1, 1), kernels=(3, 3, 7, 7, 9)),
    "cmunext_l": CMUNeXtConfig(dims=(32, 64, 128, 256, 512), depths=(1, 1, 1, 6, 3), kernels=(3, 3, 7, 7, 7)),
}


class CMUNeXtBlock(nn.Sequential):
    """``depth`` x [x + DWConv_k(x) -> PW C->4C -> PW 4C->C], then a 3x3 conv block C_in -> C_out.

    (B, C_in, *S) -> (B, C_out, *S). Only the depthwise part is residual, as in the official code.
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int, kernel_size: int, conv_op):
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [
                Residual(ConvGELUNorm(in_channels, in_channels, conv_op, kernel_size, groups=in_channels)),
                ConvGELUNorm(in_channels, in_channels * 4, conv_op),
                ConvGELUNorm(in_channels * 4, in_channels, conv_op),
            ]
        super().__init__(*layers, ConvBlock(in_channels, out_channels, conv_op))


class UpConv(nn.Sequential):
    """Upsample by ``stride`` (bi/trilinear, align_corners False) -> conv block: the official ``up_conv``."""

    def __init__(self, in_channels: int, out_channels: int, stride: Stride, conv_op: type[_ConvNd]):
        upsample = nn.Upsample(
            scale_factor=tuple(float(s) for s in stride), mode=interpolation_mode(conv_op), align_corners=False
        )
        super().__init__(upsample, *ConvBlock(in_channels, out_channels, conv_op))


class SkipFusion(nn.Sequential):
    """Skip-Fusion on ``cat(skip, up)``: grouped 3x3 (groups=2) 2C->2C, then PW 2C->4C and 4C->C.

    (B, C, *S) skip and (B, C, *S) up -> (B, C, *S): the official ``fusion_conv`` of ``cat(skip, up)``. The grouped
    convolution is computed group by group (group 1 reads the skip, group 2 the upsampled map): the same values and
    weights as on the concatenation, without building it, and on CPU faster than oneDNN's grouped kernel for few
    channels per group.
    """

    def __init__(self, channels: int, conv_op: type[_ConvNd]):
        super().__init__(
            ConvGELUNorm(2 * channels, 2 * channels, conv_op, kernel_size=3, groups=2),
            ConvGELUNorm(2 * channels, 4 * channels, conv_op),
            ConvGELUNorm(4 * channels, channels, conv_op),
        )

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        (conv, gelu, norm), *pointwise = self
        weights, biases = conv.weight.chunk(2), conv.bias.chunk(2)
        convolve = F.conv2d if isinstance(conv, nn.Conv2d) else F.conv3d
        groups = [convolve(x, w, b, padding=conv.padding) for x, w, b in zip((skip, up), weights, biases)]
        x = norm(gelu(torch.cat(groups, dim=1)))
        for unit in pointwise:
            x = unit(x)
        return x


class CMUNeXtEncoder(nn.Module):
    """Stem + one CMUNeXt block per stage, max-pooling by the stage's stride before every stage but the first.

    (B, C_in, *S) -> skips [(B, dims[i], *S / prod(strides[:i]))], finest first.
    """

    def __init__(
        self,
        input_channels: int,
        config: CMUNeXtConfig,
        strides: Sequence[Stride],
        conv_op: type[_ConvNd],
    ):
        super().__init__()
        dims = config.dims
        self.stem = ConvBlock(input_channels, dims[0], conv_op)
        self.pools = nn.ModuleList(
            [get_matching_pool_op(conv_op, pool_type="max")(kernel_size=s, stride=s) for s in strides]
        )
        self.stages = nn.ModuleList(
            CMUNeXtBlock(dims[max(i - 1, 0)], dims[i], config.depths[i], config.kernels[i], conv_op)
            for i in range(len(dims))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = [self.stages[0](self.stem(to_channels_last(x)))]
        for pool, stage in zip(self.pools, self.stages[1:]):
            skips.append(stage(pool(skips[-1])))
        return skips


class CMUNeXtDecoder(SegmentationDecoder):
    """Per level, coarse to fine: ``x = SkipFusion(cat(skip, UpConv(x)))``; a 1x1 head per level."""

    def __init__(
        self,
        config: CMUNeXtConfig,
        num_classes: int,
        strides: Sequence[Stride],
        conv_op: type[_ConvNd],
        deep_supervision: bool,
    ):
        dims = config.dims
        levels = range(len(dims) - 2, -1, -1)
        heads = nn.ModuleList(conv_op(dims[i], num_classes, 1) for i in levels)
        super().__init__(heads, cumulative_scales(strides)[-2::-1], deep_supervision)
        self.ups = nn.ModuleList(UpConv(dims[i + 1], dims[i], strides[i], conv_op) for i in levels)
        self.fusions = nn.ModuleList(SkipFusion(dims[i], conv_op) for i in levels)

    def decode_levels(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        x = skips[-1]
        levels = []
        for up, fusion, skip in zip(self.ups, self.fusions, skips[-2::-1]):
            x = fusion(skip, up(x))
            levels.append(x)
        return levels


class CMUNeXt(SegmentationNetwork):
    """CMUNeXt for nnU-Net: ``(B, input_channels, *S) -> (B, num_classes, *S)`` logits (list with deep supervision).

    Args:
        input_channels: image channels.
        num_classes: output channels (nnU-Net's ``num_segmentation_heads``).
        config: dims/depths/kernels per stage; ``CMUNEXT_VARIANTS[...]``. Shorter configs give fewer stages.
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``.
        strides: downsampling before stages 1..n-1 (n-1 entries, int or per-axis); default 2 everywhere.
        deep_supervision: return one logit map per decoder level, highest resolution first.
    """

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        config: CMUNeXtConfig = CMUNEXT_VARIANTS["cmunext"],
        conv_op: type[_ConvNd] = nn.Conv2d,
        strides: Sequence[int | Stride] | None = None,
        deep_supervision: bool = False,
    ):
        n_stages = len(config.dims)
        dim = conv_dimension(conv_op)
        strides = [2] * (n_stages - 1) if strides is None else list(strides)
        strides = [(s,) * dim if isinstance(s, int) else tuple(s) for s in strides]
        if len(strides) != n_stages - 1:
            raise ValueError(f"{n_stages} stages need {n_stages - 1} strides, got {len(strides)}")
        super().__init__(
            CMUNeXtEncoder(input_channels, config, strides, conv_op),
            CMUNeXtDecoder(config, num_classes, strides, conv_op, deep_supervision),
        )


def cmunext(variant: str = "cmunext", input_channels: int = 3, num_classes: int = 1, **kwargs) -> CMUNeXt:
    """Build a CMUNeXt variant (``"cmunext"``, ``"cmunext_s"``, ``"cmunext_l"``); kwargs go to :class:`CMUNeXt`."""
    if variant not in CMUNEXT_VARIANTS:
        raise ValueError(f"unknown CMUNeXt variant {variant!r}; choose one of {sorted(CMUNEXT_VARIANTS)}")
    return CMUNeXt(input_channels, num_classes, CMUNEXT_VARIANTS[variant], **kwargs)
