"""MGCC: Multi-Level Global Context Cross Consistency (Tang et al., arXiv 2305.09447), written against the network
contract of :mod:`nnunet_ext.networks.common` so that it wraps any backbone.

Following the official ``FengheTan9/Multi-Level-Global-Context-Cross-Consistency`` (``src/network/MGCC.py``):

- the backbone's encoder gives skips ``x_1 .. x_n`` (``x_n`` the bottleneck);
- three ConvMixer blocks (depth 3, kernel 7) are applied in series on the bottleneck only ("global context");
- four decoders of the backbone's architecture, each with its own weights, read the skips at different levels of
  global context, each auxiliary one through a perturbation applied to *every* skip level:

  =========  ==============================  =========================================================
  decoder    bottleneck fed                  perturbation of all levels
  =========  ==============================  =========================================================
  aux 1      raw encoder output              :func:`feature_dropout` (most activated positions dropped)
  aux 2      after ConvMixer 1               :func:`dropout` (element-wise, p = 0.3)
  aux 3      after ConvMixer 2               :func:`feature_noise` (x + x n, n ~ U(-0.3, 0.3))
  main       after ConvMixer 3               none
  =========  ==============================  =========================================================

- in ``train()`` mode the network returns ``(main, aux1, aux2, aux3)``; in ``eval()`` mode it computes the main path
  only and returns its logits, so ``nnUNetv2_predict`` never runs an auxiliary decoder.

The published network (:func:`mgcc_unet`) is the CMU-Net/U-Net encoder (two 3x3 conv + BN + ReLU per stage,
channels 64, 128, 256, 512, 1024) and a decoder with a multi-scale attention gate (MSAG, arXiv 2210.13012) on every
skip, nearest up-sampling + conv, and a conv block after each concatenation.

Generalisations (none changes the published 2D network):

- ``conv_op`` selects 2D or 3D, ``strides`` the downsampling per stage (anisotropic nnU-Net plans); fewer stages
  serve patches too small for four poolings.
- any number of input channels and classes (the published head has 1 output channel for a sigmoid);
- with ``deep_supervision`` every decoder level of the main decoder has a 1x1 head (nnU-Net's convention; the
  published decoder only has the final one). The auxiliary decoders always return full-resolution logits only.
- The input is converted to channels-last memory layout (same values), which every layer inherits: on CPU the
  backward pass of the depthwise 7x7 ConvMixer convolutions is an order of magnitude faster in it
  (:func:`~nnunet_ext.networks.common.to_channels_last`).
- The order of perturbations is the one of the official commit a9c8bd3; an older revision of the
  official file feeds feature noise to aux 1 and feature dropout to aux 3.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import get_matching_batchnorm, get_matching_pool_op
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_ext.networks.blocks import ConvBlock, ConvGELUNorm, Residual
from nnunet_ext.networks.common import (
    SegmentationDecoder,
    SegmentationNetwork,
    Stride,
    conv_dimension,
    cumulative_scales,
    to_channels_last,
)

#: channels of the published encoder stages (16 * dim_mult with dim_mult = 4)
MGCC_DIMS: tuple[int, ...] = (64, 128, 256, 512, 1024)
#: ConvMixer layers per global-context block and their depthwise kernel (``MGCC(length=(3, 3, 3), k=7)``)
CONVMIXER_DEPTHS: tuple[int, ...] = (3, 3, 3)
CONVMIXER_KERNEL = 7
#: FeatureDropout threshold fraction of the per-sample maximum, drawn uniformly once per call
FEATURE_DROPOUT_RANGE = (0.7, 0.9)
DROPOUT_P = 0.3
FEATURE_NOISE_RANGE = 0.3


# ------------------------------------------------------------------------------------------------ perturbations
def feature_dropout(x: torch.Tensor, low: float = FEATURE_DROPOUT_RANGE[0], high: float = FEATURE_DROPOUT_RANGE[1]):
    """Drop the most activated positions: (B, C, *S) -> (B, C, *S).

    ``a = mean_c(x)`` (B, 1, *S); ``thr_b = max_S(a_b) * u`` with one ``u ~ U(low, high)`` per call shared by the
    batch; ``x * 1[a < thr]`` (SSL4MIS ``FeatureDropout``). Not rescaled.

    Deviation: ``u`` comes from torch's generator on ``x``'s device, not NumPy's as in the official code, so that it
    stays a fresh draw per call in a ``torch.compile``-d network (a NumPy draw is a constant of the traced graph).

    On LayerNorm outputs (GCtx-UNet's skips) ``a`` is float rounding (about 1e-8) while the LayerNorm's affine
    parameters are at their initial values: the mask is then arbitrary, and it follows the features only once
    those parameters have trained away from weight 1, bias 0.
    """
    attention = x.mean(dim=1, keepdim=True)
    maximum = attention.flatten(1).amax(dim=1).view(-1, *[1] * (x.ndim - 1))
    threshold = maximum * torch.empty((), device=x.device).uniform_(low, high)
    return x * (attention < threshold).to(x.dtype)


def dropout(x: torch.Tensor, p: float = DROPOUT_P) -> torch.Tensor:
    """Element-wise dropout, always active (the official ``F.dropout(x, 0.3)`` keeps ``training=True``), kept
    values scaled by ``1 / (1 - p)``."""
    return F.dropout(x, p, training=True)


def feature_noise(x: torch.Tensor, uniform_range: float = FEATURE_NOISE_RANGE) -> torch.Tensor:
    """``x + x * n`` with ``n ~ U(-r, r)`` of shape (C, *S), shared by every sample of the batch, drawn per call."""
    noise = torch.empty(x.shape[1:], device=x.device, dtype=x.dtype).uniform_(-uniform_range, uniform_range)
    return x + x * noise.unsqueeze(0)


#: perturbation of the skips fed to auxiliary decoders 1, 2, 3
AUX_PERTURBATIONS: tuple[Callable[[torch.Tensor], torch.Tensor], ...] = (feature_dropout, dropout, feature_noise)


# ------------------------------------------------------------------------------------------------ building blocks
class ConvMixerBlock(nn.Sequential):
    """``depth`` ConvMixer layers (Trockman & Kolter, arXiv 2201.09792): ``x + BN(GELU(DWConv_k(x)))`` then
    ``BN(GELU(Conv1x1(.)))``. (B, C, *S) -> (B, C, *S)."""

    def __init__(self, channels: int, depth: int, kernel_size: int, conv_op: type[_ConvNd]):
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [
                Residual(ConvGELUNorm(channels, channels, conv_op, kernel_size, groups=channels)),
                ConvGELUNorm(channels, channels, conv_op),
            ]
        super().__init__(*layers)


class DoubleConv(nn.Sequential):
    """2 x [Conv 3x3 (bias) -> BN -> ReLU]: the official ``conv_block``. (B, C_in, *S) -> (B, C_out, *S)."""

    def __init__(self, in_channels: int, out_channels: int, conv_op: type[_ConvNd]):
        first, second = ConvBlock(in_channels, out_channels, conv_op), ConvBlock(out_channels, out_channels, conv_op)
        super().__init__(*first, *second)


class ConvNorm(nn.Sequential):
    def __init__(self, channels: int, conv_op: type[_ConvNd], kernel_size: int, dilation: int = 1):
        norm_op = get_matching_batchnorm(conv_op)
        padding = dilation * (kernel_size // 2)
        conv = conv_op(channels, channels, kernel_size, padding=padding, dilation=dilation)
        super().__init__(conv, norm_op(channels))


class MSAG(nn.Module):
    """Multi-scale attention gate: ``a = sigmoid(BN(Conv1x1(ReLU(cat(P(x), O(x), D(x))))))``, ``x + x * a``, with P a
    1x1, O a 3x3 and D a dilation-2 3x3 conv (each + BN). (B, C, *S) -> (B, C, *S)."""

    def __init__(self, channels: int, conv_op: type[_ConvNd]):
        super().__init__()
        self.pointwise = ConvNorm(channels, conv_op, 1)
        self.ordinary = ConvNorm(channels, conv_op, 3)
        self.dilated = ConvNorm(channels, conv_op, 3, dilation=2)
        norm_op = get_matching_batchnorm(conv_op)
        self.vote = nn.Sequential(conv_op(3 * channels, channels, 1), norm_op(channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = torch.cat((self.pointwise(x), self.ordinary(x), self.dilated(x)), dim=1)
        return x + x * self.vote(F.relu(branches))


class UpConvNearest(nn.Sequential):
    """Nearest up-sampling by ``stride`` -> Conv 3x3 + BN + ReLU: the official ``up_conv``."""

    def __init__(self, in_channels: int, out_channels: int, stride: Stride, conv_op: type[_ConvNd]):
        upsample = nn.Upsample(scale_factor=tuple(float(s) for s in stride), mode="nearest")
        super().__init__(upsample, *ConvBlock(in_channels, out_channels, conv_op))


class UNetEncoder(nn.Module):
    """``DoubleConv`` per stage, max-pooling by the stage's stride before every stage but the first.

    (B, C_in, *S) -> skips [(B, dims[i], *S / prod(strides[:i]))], finest first.
    """

    def __init__(self, input_channels: int, dims: Sequence[int], strides: Sequence[Stride], conv_op: type[_ConvNd]):
        super().__init__()
        pool_op = get_matching_pool_op(conv_op, pool_type="max")
        self.pools = nn.ModuleList(pool_op(kernel_size=s, stride=s) for s in strides)
        channels = [input_channels, *dims]
        self.stages = nn.ModuleList(DoubleConv(channels[i], channels[i + 1], conv_op) for i in range(len(dims)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = [self.stages[0](x)]
        for pool, stage in zip(self.pools, self.stages[1:]):
            skips.append(stage(pool(skips[-1])))
        return skips


class MSAGDecoder(SegmentationDecoder):
    """The official ``Decoder``: MSAG on every skip but the bottleneck, then per level, coarse to fine,
    ``x = DoubleConv(cat(skip, UpConvNearest(x)))``; a 1x1 head per level."""

    def __init__(
        self,
        dims: Sequence[int],
        num_classes: int,
        strides: Sequence[Stride],
        conv_op: type[_ConvNd],
        deep_supervision: bool,
    ):
        levels = range(len(dims) - 2, -1, -1)
        heads = nn.ModuleList(conv_op(dims[i], num_classes, 1) for i in levels)
        super().__init__(heads, cumulative_scales(strides)[-2::-1], deep_supervision)
        self.gates = nn.ModuleList(MSAG(dims[i], conv_op) for i in levels)
        self.ups = nn.ModuleList(UpConvNearest(dims[i + 1], dims[i], strides[i], conv_op) for i in levels)
        self.convs = nn.ModuleList(DoubleConv(2 * dims[i], dims[i], conv_op) for i in levels)

    def decode_levels(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        x = skips[-1]
        levels = []
        for gate, up, conv, skip in zip(self.gates, self.ups, self.convs, skips[-2::-1]):
            x = conv(torch.cat((gate(skip), up(x)), dim=1))
            levels.append(x)
        return levels


# ------------------------------------------------------------------------------------------------ the scheme network
class MGCCNetwork(SegmentationNetwork):
    """A backbone's encoder, a ConvMixer chain on its bottleneck, its decoder (main) and three auxiliary decoders.

    ``eval()``: ``(B, C_in, *S) -> logits`` of the main decoder (a list with deep supervision), auxiliary decoders not
    run. ``train()``: ``(main, aux1, aux2, aux3)``, main as in eval, each aux ``(B, num_classes, *S)``.

    Args:
        backbone: a network of the contract; its encoder and decoder become the main path.
        aux_decoders: three decoders of the backbone's architecture with their own weights (deep supervision is
            switched off on them and their lower-resolution heads are frozen).
        bottleneck_channels: channels of the backbone's last skip.
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``.
        depths, kernel_size: ConvMixer layers per global-context block and their depthwise kernel.
    """

    def __init__(
        self,
        backbone: SegmentationNetwork,
        aux_decoders: Sequence[SegmentationDecoder],
        bottleneck_channels: int,
        conv_op: type[_ConvNd] = nn.Conv2d,
        depths: Sequence[int] = CONVMIXER_DEPTHS,
        kernel_size: int = CONVMIXER_KERNEL,
    ):
        if len(aux_decoders) != len(AUX_PERTURBATIONS) or len(depths) != len(AUX_PERTURBATIONS):
            raise ValueError(
                f"MGCC has {len(AUX_PERTURBATIONS)} auxiliary decoders and global-context blocks, got "
                f"{len(aux_decoders)} decoders and {len(depths)} depths"
            )
        for decoder in (backbone.decoder, *aux_decoders):
            if any(module is backbone.encoder for module in decoder.modules()):
                raise ValueError(
                    f"{type(decoder).__name__} holds the encoder as a submodule; MGCC needs decoders that only take "
                    "the skip list (nnunet_ext.networks.common contract)"
                )
        super().__init__(backbone.encoder, backbone.decoder)
        self.global_context = nn.ModuleList(
            ConvMixerBlock(bottleneck_channels, depth, kernel_size, conv_op) for depth in depths
        )
        self.aux_decoders = nn.ModuleList(aux_decoders)
        for decoder in self.aux_decoders:
            decoder.deep_supervision = False
            # heads that never run: frozen, so DistributedDataParallel does not wait for their gradients (nnU-Net
            # wraps with find_unused_parameters=False); kept in the state dict
            decoder.seg_heads[:-1].requires_grad_(False)

    def forward(self, x: torch.Tensor):
        """Training mode: the tuple ``(main, aux1, aux2, aux3)`` that :class:`~nnunet_ext.ssl.mgcc_loss.MGCCObjective`
        takes; evaluation mode: ``main`` alone (:meth:`forward_main`), what nnU-Net's validation and predictor expect
        of any network. ``main`` is (B, num_classes, *S), or a list of such maps with deep supervision on."""
        if not self.training:
            return self.forward_main(x)
        skips = self.encoder(to_channels_last(x))
        bottleneck = skips[-1]
        aux = []
        for block, decoder, perturb in zip(self.global_context, self.aux_decoders, AUX_PERTURBATIONS):
            aux.append(decoder([perturb(skip) for skip in (*skips[:-1], bottleneck)]))
            bottleneck = block(bottleneck)
        return (self.decoder([*skips[:-1], bottleneck]), *aux)

    def forward_main(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """The inference path in any mode: encoder, the three ConvMixer blocks, main decoder (no perturbation)."""
        skips = self.encoder(to_channels_last(x))
        bottleneck = skips[-1]
        for block in self.global_context:
            bottleneck = block(bottleneck)
        return self.decoder([*skips[:-1], bottleneck])


def bottleneck_channels_of(encoder: nn.Module, input_channels: int, patch_size: Sequence[int]) -> int:
    """Channels of the last skip ``encoder`` gives for a ``patch_size`` input (shape propagation on the meta device;
    the encoder itself is not run)."""
    probe = copy.deepcopy(encoder).to("meta").eval()  # eval: batch norm accepts a single value per channel
    with torch.no_grad():
        skips = probe(torch.empty(1, input_channels, *patch_size, device="meta"))
    return int(skips[-1].shape[1])


def mgcc_from_backbones(
    build_backbone: Callable[[], SegmentationNetwork], input_channels: int, patch_size: Sequence[int]
) -> MGCCNetwork:
    """MGCC around the backbone ``build_backbone()`` builds; the three auxiliary decoders are the decoders of three
    further builds (so each has its own initialisation, as the official four ``Decoder`` instances), their encoders
    discarded."""
    backbone = build_backbone()
    if not isinstance(backbone, SegmentationNetwork):
        raise TypeError(
            f"MGCC needs a backbone following nnunet_ext.networks.common.SegmentationNetwork (encoder -> skips, "
            f"decoder(skips)); got {type(backbone).__name__}"
        )
    conv_op = {2: nn.Conv2d, 3: nn.Conv3d}[len(patch_size)]
    aux_decoders = [build_backbone().decoder for _ in AUX_PERTURBATIONS]
    channels = bottleneck_channels_of(backbone.encoder, input_channels, patch_size)
    return MGCCNetwork(backbone, aux_decoders, channels, conv_op)


def mgcc_unet(
    input_channels: int,
    num_classes: int,
    dims: Sequence[int] = MGCC_DIMS,
    conv_op: type[_ConvNd] = nn.Conv2d,
    strides: Sequence[int | Stride] | None = None,
    deep_supervision: bool = False,
) -> SegmentationNetwork:
    """The published MGCC backbone: :class:`UNetEncoder` (``dims``, default 64..1024) + :class:`MSAGDecoder`.

    ``strides``: downsampling before stages 1..n-1 (int or per axis), default 2 everywhere.
    """
    dim = conv_dimension(conv_op)
    strides = [2] * (len(dims) - 1) if strides is None else list(strides)
    strides = [(s,) * dim if isinstance(s, int) else tuple(s) for s in strides]
    if len(strides) != len(dims) - 1:
        raise ValueError(f"{len(dims)} stages need {len(dims) - 1} strides, got {len(strides)}")
    return SegmentationNetwork(
        UNetEncoder(input_channels, dims, strides, conv_op),
        MSAGDecoder(dims, num_classes, strides, conv_op, deep_supervision),
    )
