"""GCT-UNet: a convolutional U-Net with a gated-context (GCT) module at every stage.

This is the "GCTx-UNet" as described alongside the GCtx-UNet OCT run (a description that does not match the
official GC-ViT code; that network is :mod:`nnunet_ext.networks.gctx_unet`). The GCT module on X (B, C, *S):

- channel gate ``a_c = sigmoid(W_c z + b_c)`` with ``z = GAP(X)`` (W_c: C x C, i.e. a Linear C -> C),
- spatial gate ``a_s = sigmoid(conv(X))``, a k^d convolution C -> 1 (the description leaves the kernel open;
  ``spatial_kernel`` defaults to 7, the usual size of spatial-attention gates),
- ``Y = X * a_c * a_s + X``.

Placement, as described: after every encoder stage (the last encoder stage's module is the bottleneck's), after
every decoder stage, and on every skip connection, where the skip then passes a 1x1 alignment convolution and,
optionally, an additive attention gate (Oktay et al. 2018) driven by the upsampled decoder features.

The backbone is nnU-Net's plain U-Net (dynamic-network-architectures ``StackedConvBlocks``: conv -> InstanceNorm ->
LeakyReLU, strided first conv per stage, transposed-conv upsampling, concatenation skips), dimension-agnostic
(``conv_op``), with stages, features, kernels and strides from the plans and a 1x1 head per decoder stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from dynamic_network_architectures.building_blocks.helper import get_matching_convtransp, get_matching_instancenorm
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_ext.networks.common import (
    SegmentationDecoder,
    SegmentationNetwork,
    Stride,
    conv_dimension,
    cumulative_scales,
)


class GCTModule(nn.Module):
    """``Y = X * sigmoid(W_c GAP(X) + b_c) * sigmoid(conv_k(X)) + X``; (B, C, *S) -> (B, C, *S)."""

    def __init__(self, channels: int, conv_op: type[_ConvNd], spatial_kernel: int = 7):
        super().__init__()
        self.dim = conv_dimension(conv_op)
        self.channel_gate = nn.Linear(channels, channels)
        self.spatial_gate = conv_op(channels, 1, spatial_kernel, padding=spatial_kernel // 2)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_c (B, C, 1, ...), a_s (B, 1, *S)), both in [0, 1]."""
        z = x.mean(dim=tuple(range(2, x.ndim)))
        a_c = torch.sigmoid(self.channel_gate(z)).reshape(*z.shape, *([1] * self.dim))
        return a_c, torch.sigmoid(self.spatial_gate(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_c, a_s = self.gates(x)
        return x * a_c * a_s + x


class AttentionGate(nn.Module):
    """Additive attention gate: ``skip * sigmoid(psi(ReLU(W_x skip + W_g g)))``, g the upsampled decoder map.

    skip, g: (B, C, *S) -> (B, C, *S); intermediate channels C/2.
    """

    def __init__(self, channels: int, conv_op: type[_ConvNd]):
        super().__init__()
        inter = max(channels // 2, 1)
        self.skip_proj = conv_op(channels, inter, 1)
        self.gate_proj = conv_op(channels, inter, 1)
        self.psi = conv_op(inter, 1, 1)

    def forward(self, skip: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return skip * torch.sigmoid(self.psi(torch.relu(self.skip_proj(skip) + self.gate_proj(g))))


def conv_stage(
    conv_op: type[_ConvNd], n_convs: int, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Stride
) -> StackedConvBlocks:
    """nnU-Net's stage: ``n_convs`` x (conv -> InstanceNorm (affine) -> LeakyReLU), the first with ``stride``."""
    return StackedConvBlocks(
        n_convs,
        conv_op,
        in_ch,
        out_ch,
        kernel,
        stride,
        conv_bias=True,
        norm_op=get_matching_instancenorm(conv_op),
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
    )


class GCTEncoder(nn.Module):
    """Conv stages each followed by a GCT module. (B, C_in, *S) -> skips [(B, F_i, *S_i)], finest first."""

    def __init__(
        self,
        input_channels: int,
        features: Sequence[int],
        kernels: Sequence[Sequence[int]],
        strides: Sequence[Stride],
        n_convs: Sequence[int],
        conv_op: type[_ConvNd],
        spatial_kernel: int,
    ):
        super().__init__()
        in_channels = [input_channels, *features[:-1]]
        self.stages = nn.ModuleList(
            conv_stage(conv_op, n_convs[i], in_channels[i], features[i], kernels[i], strides[i])
            for i in range(len(features))
        )
        self.gcts = nn.ModuleList(GCTModule(f, conv_op, spatial_kernel) for f in features)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage, gct in zip(self.stages, self.gcts):
            x = gct(stage(x))
            skips.append(x)
        return skips


class GCTDecoder(SegmentationDecoder):
    """Per level, coarse to fine: up = TransposedConv(x); s = Align1x1(GCT(skip)) [gated by up];
    x = GCT(ConvStage(cat(up, s))); a 1x1 head per level."""

    def __init__(
        self,
        num_classes: int,
        features: Sequence[int],
        kernels: Sequence[Sequence[int]],
        strides: Sequence[Stride],
        n_convs: Sequence[int],
        conv_op: type[_ConvNd],
        spatial_kernel: int,
        attention_gate: bool,
        deep_supervision: bool,
    ):
        levels = range(len(features) - 2, -1, -1)
        heads = nn.ModuleList(conv_op(features[i], num_classes, 1) for i in levels)
        super().__init__(heads, cumulative_scales(strides[1:])[-2::-1], deep_supervision)
        transp = get_matching_convtransp(conv_op)
        self.ups = nn.ModuleList(
            transp(features[i + 1], features[i], strides[i + 1], strides[i + 1], bias=True) for i in levels
        )
        self.skip_gcts = nn.ModuleList(GCTModule(features[i], conv_op, spatial_kernel) for i in levels)
        self.skip_align = nn.ModuleList(conv_op(features[i], features[i], 1) for i in levels)
        self.attention_gates = (
            nn.ModuleList(AttentionGate(features[i], conv_op) for i in levels) if attention_gate else None
        )
        self.stages = nn.ModuleList(
            conv_stage(conv_op, n_convs[j], 2 * features[i], features[i], kernels[i], 1) for j, i in enumerate(levels)
        )
        self.gcts = nn.ModuleList(GCTModule(features[i], conv_op, spatial_kernel) for i in levels)

    def decode_levels(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        x = skips[-1]
        levels = []
        for j, skip in enumerate(skips[-2::-1]):
            up = self.ups[j](x)
            skip = self.skip_align[j](self.skip_gcts[j](skip))
            if self.attention_gates is not None:
                skip = self.attention_gates[j](skip, up)
            x = self.gcts[j](self.stages[j](torch.cat((up, skip), dim=1)))
            levels.append(x)
        return levels


class GCTUNet(SegmentationNetwork):
    """GCT-UNet: ``(B, input_channels, *S) -> (B, num_classes, *S)`` logits (list with deep supervision).

    Args:
        input_channels: image channels.
        num_classes: output channels.
        features: channels per stage (nnU-Net's ``features_per_stage``).
        kernels: conv kernel per stage.
        strides: stride of each stage's first conv, the first usually all ones (nnU-Net's ``strides``).
        n_convs: convs per encoder stage; ``n_convs_decoder`` per decoder stage (coarse to fine).
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``.
        spatial_kernel: kernel of the GCT spatial gate.
        attention_gate: gate each aligned skip by the upsampled decoder features.
        deep_supervision: one logit map per decoder stage, highest resolution first.
    """

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        features: Sequence[int],
        kernels: Sequence[int | Sequence[int]],
        strides: Sequence[int | Stride],
        n_convs: Sequence[int] | int = 2,
        n_convs_decoder: Sequence[int] | int = 2,
        conv_op: type[_ConvNd] = nn.Conv2d,
        spatial_kernel: int = 7,
        attention_gate: bool = False,
        deep_supervision: bool = False,
    ):
        dim = conv_dimension(conv_op)
        n = len(features)
        if not len(kernels) == len(strides) == n or n < 2:
            raise ValueError(f"need >= 2 stages with one kernel and stride each: {features=}, {kernels=}, {strides=}")

        def per_axis(values):
            return [(v,) * dim if isinstance(v, int) else tuple(v) for v in values]

        n_convs = [n_convs] * n if isinstance(n_convs, int) else list(n_convs)
        n_convs_decoder = [n_convs_decoder] * (n - 1) if isinstance(n_convs_decoder, int) else list(n_convs_decoder)
        kernels, strides = per_axis(kernels), per_axis(strides)
        super().__init__(
            GCTEncoder(input_channels, features, kernels, strides, n_convs, conv_op, spatial_kernel),
            GCTDecoder(
                num_classes,
                features,
                kernels,
                strides,
                n_convs_decoder,
                conv_op,
                spatial_kernel,
                attention_gate,
                deep_supervision,
            ),
        )
        self.apply(InitWeights_He(1e-2))
