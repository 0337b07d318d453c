"""GCGLE-Net: Global Contextual Guided Local Extraction Network (a BRAU-Net++ fork, ``minshiquan/GCGLE_Net``).

A U-shaped network of BiFormer blocks whose MLP is replaced by the Local Extraction Block (LEB, with ECA), and
whose skip fusions pass through the Channel-Spatial Aggregation Module (CSAM). The official code does not run as
published (mismatched layouts between blocks, see ``GCGLEConfig.official_layout_bugs``); this is its intended
semantics:

- encoder: conv stem (/4) and stages of :class:`GCGLEBlock` (96, 192, 384 channels; depths 2, 2, 8; top-k 2, 4, 8;
  32-wide heads) with strided 3x3 conv + BN downsampling, down to a 768-channel bottleneck at 1/32;
- decoder, per level: ``PatchExpand`` of the coarser map, ``cat([up, skip])``, CSAM, Linear ``2C -> C``, blocks;
  then LayerNorm, ``FinalPatchExpand_X4`` and a 1x1 projection (no bias) to the classes.

Faithfulness switches (defaults: the R4 network of the figure, whose ``params used in forward`` equal the
reference's 47,393,016 at 3 channels / 9 classes):

- ``four_level_decoder=False`` gives the literal 3-level decoder "R3" of the official code (two CSAM levels; the
  56x56 level is dropped, its upsample feeds the head directly): 46,641,998 parameters.
- ``bottleneck_depth=2`` runs the two 768-channel full-attention blocks (BiFormer ``topk=-2``: MHSA + LePE) at
  the bottleneck that the figure shows and the official code builds but never calls.
- ``official_layout_bugs=True`` reproduces two layout defects of the official code (LEB output spatially transposed,
  CSAM channel attention on reinterpreted memory); off by default. Needs square maps.

Deviations from the official code, all documented where they happen: nothing is built that the forward does not
run (the official code builds ``stages[3]`` and ``output_conv1`` unused); the input channels go to the stem
directly (the official wrapper repeats 1 channel to 3); logits are not transposed (defect 6); routing regions are
chosen per stage from the map size (:func:`~nnunet_ext.networks.attention.bra.region_grid`), which reproduces
``n_win`` 7 at 224 and 8 at 256 and serves any patch whose sides are multiples of 4 (stride-2 convs round up;
the decoder crops each upsampled map to its skip); optional deep-supervision heads at every decoder level.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from monai.networks.layers import DropPath
from torch import nn

from nnunet_ext.checkpoints import load_matching
from nnunet_ext.networks.attention.bra import AttentionLePE, BiLevelRoutingAttention, BRAKernel
from nnunet_ext.networks.common import SegmentationDecoder, SegmentationNetwork, init_transformer_weights
from nnunet_ext.networks.depthwise import DepthwiseConv2d


@dataclass(frozen=True)
class GCGLEConfig:
    """Hyper-parameters of GCGLE-Net (the published Synapse configuration by default).

    ``dims``/``depths``/``topks``/``region_sizes`` describe encoder stages 0-2 (1/4, 1/8, 1/16 of the input);
    ``decoder_depths`` the decoder levels from coarse (1/16) to fine (1/4). A region size is the routing region's
    side in pixels of that stage (8, 4, 2: 7x7 regions at 224, 8x8 at 256, as the published ``n_win``).
    ``bra_kernel`` chooses how BRA computes its token attention (same outputs; ``"gather"`` is the paper's
    computation and FLOP count, ``"auto"`` runs the faster kernel per stage, see
    :class:`~nnunet_ext.networks.attention.bra.BiLevelRoutingAttention`).
    """

    dims: tuple[int, ...] = (96, 192, 384)
    depths: tuple[int, ...] = (2, 2, 8)
    topks: tuple[int, ...] = (2, 4, 8)
    region_sizes: tuple[int, ...] = (8, 4, 2)
    decoder_depths: tuple[int, ...] = (8, 2, 2)
    bottleneck_dim: int = 768
    bottleneck_depth: int = 0
    head_dim: int = 32
    drop_path_rate: float = 0.2
    four_level_decoder: bool = True
    official_layout_bugs: bool = False
    bra_kernel: BRAKernel = "auto"


def _nchw(x: torch.Tensor) -> torch.Tensor:
    """NHWC -> NCHW view. NCHW maps stay in channels-last memory throughout the network: on CPU, depthwise
    convolutions run their backward pass up to 20x faster in that layout than on NCHW-contiguous tensors."""
    return x.permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def _transpose_hw(x: torch.Tensor) -> torch.Tensor:
    """Swap the two spatial axes of an NHWC map (the official LEB's ``permute(0, 3, 2, 1)`` on NCHW)."""
    if x.shape[1] != x.shape[2]:
        raise ValueError(f"official_layout_bugs needs square maps, got {x.shape[1]}x{x.shape[2]}")
    return x.transpose(1, 2)


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA-Net's adaptive kernel: ``t = int(|log2(C) + b| / gamma)``, made odd (Wang et al., CVPR 2020, Eq. 12)."""
    t = int(abs(math.log2(channels) + b) / gamma)
    return t if t % 2 else t + 1


class ECA(nn.Module):
    """Efficient channel attention: ``x * sigmoid(Conv1d_k(GAP(x)))`` across channels; (N, C, H, W) -> same."""

    def __init__(self, channels: int):
        super().__init__()
        k = eca_kernel_size(channels)
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.conv(x.mean((2, 3))[:, None, :]).sigmoid()
        return x * weights[:, 0, :, None, None]


class LEBConv(nn.Sequential):
    """LEB's convolution branch, (N, C, H, W) -> same: PW C->4C, BN, ReLU6, DW 5x5, BN, ReLU6, ECA, PW 4C->C, BN."""

    def __init__(self, dim: int, ratio: int = 4):
        hidden = ratio * dim
        super().__init__(
            nn.Conv2d(dim, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            DepthwiseConv2d(hidden, 5, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            ECA(hidden),
            nn.Conv2d(hidden, dim, 1, bias=False),
            nn.BatchNorm2d(dim),
        )


class LocalExtractionBlock(nn.Module):
    """LEB, the GCGLE replacement of the transformer MLP: ``u + LEBConv(u)``; (N, H, W, C) -> same.

    With ``official_layout_bugs`` the result is returned spatially transposed, as the official code's
    ``permute(0, 3, 2, 1)`` of the NCHW result does (defect 4; square maps only).
    """

    def __init__(self, dim: int, official_layout_bugs: bool = False):
        super().__init__()
        self.conv = LEBConv(dim)
        self.official_layout_bugs = official_layout_bugs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x + _nhwc(self.conv(_nchw(x)))
        return _transpose_hw(out) if self.official_layout_bugs else out


class GCGLEBlock(nn.Module):
    """BiFormer block with LEB (figure (a)); (N, H, W, C) -> same. BRAU-Net++'s ordering is kept:

    ``t = LN1(x); t = t + DWConv3(t); t = t + DropPath(Attn(LN1(t))); t = t + DropPath(LEB(LN2(t)))``
    (the input is normalised and not reused as shortcut; LN1 is applied twice). ``topk > 0`` gives BRA, ``topk =
    -2`` full attention with LePE (BiFormer's convention).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        topk: int,
        region_size: int,
        drop_path: float = 0.0,
        official_layout_bugs: bool = False,
        bra_kernel: BRAKernel = "auto",
    ):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if topk > 0:
            self.attn: nn.Module = BiLevelRoutingAttention(dim, num_heads, topk, region_size, kernel=bra_kernel)
        elif topk == -2:
            self.attn = AttentionLePE(dim, num_heads)
        else:
            raise ValueError(f"GCGLE blocks use top-k > 0 (BRA) or -2 (full attention + LePE), got {topk}")
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.leb = LocalExtractionBlock(dim, official_layout_bugs)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.norm1(x)
        t = t + _nhwc(self.pos_embed(_nchw(t)))
        t = t + self.drop_path(self.attn(self.norm1(t)))
        return t + self.drop_path(self.leb(self.norm2(t)))


class GCGLEStage(nn.Sequential):
    """``depth`` blocks on an NCHW map, (N, C, H, W) -> same; stochastic depth ``drop_paths[i]`` per block."""

    def __init__(self, dim: int, topk: int, region_size: int, drop_paths: list[float], config: GCGLEConfig):
        super().__init__(
            *(
                GCGLEBlock(
                    dim,
                    dim // config.head_dim,
                    topk,
                    region_size,
                    rate,
                    config.official_layout_bugs,
                    config.bra_kernel,
                )
                for rate in drop_paths
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _nchw(super().forward(_nhwc(x)))


class CSAM(nn.Module):
    """Channel-Spatial Aggregation Module on the concatenated skip; (N, C, H, W) -> same (rate 4, 5x5 convs).

    ``x = x * CA(x)`` with ``CA`` a per-pixel Linear C->C/4 -> ReLU -> Linear C/4->C (no pooling, no sigmoid, as
    the code), then ``x * sigmoid(SA(x))`` with ``SA`` = Conv5 C->C/4, BN, ReLU, Conv5 C/4->C, BN.
    With ``official_layout_bugs`` the channel attention reads the NCHW memory as if it were NHWC (the official
    ``x.contiguous().view(b, h, w, c)``, defect 5) and its result is laid back with a permute, as the code does.
    """

    def __init__(self, channels: int, rate: int = 4, official_layout_bugs: bool = False):
        super().__init__()
        reduced = channels // rate
        self.channel_attention = nn.Sequential(
            nn.Linear(channels, reduced), nn.ReLU(inplace=True), nn.Linear(reduced, channels)
        )
        self.spatial_attention = nn.Sequential(
            nn.Conv2d(channels, reduced, 5, padding=2),
            nn.BatchNorm2d(reduced),
            nn.ReLU(inplace=True),
            nn.Conv2d(reduced, channels, 5, padding=2),
            nn.BatchNorm2d(channels),
        )
        self.official_layout_bugs = official_layout_bugs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = x.contiguous().view(n, h, w, c) if self.official_layout_bugs else _nhwc(x)
        x = x * _nchw(self.channel_attention(tokens))
        return x * self.spatial_attention(x).sigmoid()


class PatchExpand(nn.Module):
    """Swin-Unet patch expanding, (N, H, W, C) -> (N, pH, pW, C_out): Linear C -> p^2 C_out (no bias), pixel
    shuffle ``b h w (p1 p2 c) -> b (h p1) (w p2) c``, LayerNorm. ``p = 2, C_out = C/2`` between decoder levels;
    ``p = 4, C_out = C`` for the final x4 expanding."""

    def __init__(self, dim: int, scale: int = 2, out_dim: int | None = None):
        super().__init__()
        self.scale, self.out_dim = scale, out_dim or dim // 2
        self.expand = nn.Linear(dim, scale * scale * self.out_dim, bias=False)
        self.norm = nn.LayerNorm(self.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, _ = x.shape
        p, c = self.scale, self.out_dim
        x = self.expand(x).reshape(n, h, w, p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h * p, w * p, c)
        return self.norm(x)


def _drop_paths(rate: float, depth: int) -> list[float]:
    return [float(r) for r in torch.linspace(0, rate, depth)]


class GCGLEEncoder(nn.Module):
    """Stem (/4) and three block stages, each followed by a stride-2 conv + BN; optional bottleneck blocks.

    (N, C_in, H, W) -> skips [96@H/4, 192@H/8, 384@H/16, 768@H/32] (NCHW, finest first). H and W must be
    multiples of 4; stride-2 convs round odd sizes up. Names follow BiFormer (``downsample_layers``, ``stages``)
    so ImageNet checkpoints load by name. Stochastic depth: linspace(0, rate) over the official 2+2+8+2 blocks
    (the official code spreads it over its built, unused ``stages[3]`` too); ``stages[3]`` holds the optional
    full-attention bottleneck blocks (empty by default).
    """

    def __init__(self, input_channels: int, config: GCGLEConfig):
        super().__init__()
        dims = (*config.dims, config.bottleneck_dim)
        stem = nn.Sequential(
            nn.Conv2d(input_channels, dims[0] // 2, 3, stride=2, padding=1),
            nn.BatchNorm2d(dims[0] // 2),
            nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1),
            nn.BatchNorm2d(dims[0]),
        )
        self.downsample_layers = nn.ModuleList(
            [stem]
            + [
                nn.Sequential(nn.Conv2d(dims[i], dims[i + 1], 3, stride=2, padding=1), nn.BatchNorm2d(dims[i + 1]))
                for i in range(len(config.dims))
            ]
        )
        rates = _drop_paths(config.drop_path_rate, sum(config.depths) + max(config.bottleneck_depth, 2))
        starts = [sum(config.depths[:i]) for i in range(len(config.depths) + 1)]
        self.stages = nn.ModuleList(
            GCGLEStage(
                dims[i],
                config.topks[i],
                config.region_sizes[i],
                rates[starts[i] : starts[i] + config.depths[i]],
                config,
            )
            for i in range(len(config.depths))
        )
        bottleneck_rates = rates[starts[-1] : starts[-1] + config.bottleneck_depth]
        self.stages.append(GCGLEStage(dims[-1], -2, 1, bottleneck_rates, config))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[-2] % 4 or x.shape[-1] % 4:
            raise ValueError(f"GCGLE-Net needs patch sides divisible by 4, got {tuple(x.shape[-2:])}")
        x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
            skips.append(x)
        return skips


class GCGLEDecoderLevel(nn.Module):
    """One decoder level, (N, C, h, w) upsampled map + (N, C, h, w) skip -> (N, C, h, w) NCHW features.

    ``cat([up, skip]) -> CSAM(2C) -> Linear 2C -> C -> blocks``; :meth:`upsample_output` then gives the next
    level's input (``PatchExpand`` C -> C/2, x2) where the level has one.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        config: GCGLEConfig,
        topk: int,
        region_size: int,
        upsample: bool,
    ):
        super().__init__()
        self.csam = CSAM(2 * dim, official_layout_bugs=config.official_layout_bugs)
        self.reduce = nn.Linear(2 * dim, dim)
        self.blocks = GCGLEStage(dim, topk, region_size, _drop_paths(config.drop_path_rate, depth), config)
        self.upsample = PatchExpand(dim) if upsample else None

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        fused = self.csam(torch.cat((up, skip), dim=1))
        return self.blocks(_nchw(self.reduce(_nhwc(fused))))

    def upsample_output(self, x: torch.Tensor) -> torch.Tensor:
        return _nchw(self.upsample(_nhwc(x)))


class GCGLEDecoder(SegmentationDecoder):
    """PatchExpand of the bottleneck, decoder levels at 1/16, 1/8 (and 1/4 with ``four_level_decoder``),
    LayerNorm, x4 patch expanding and a 1x1 projection without bias (the final head, ``seg_heads[-1]``).

    ``decode_levels`` returns the level features (coarse to fine, NCHW) and the 96-channel full-resolution map
    that the final head projects; deep-supervision heads (1x1 conv with bias) read the level features.
    Upsampled maps are cropped to their skip (patches whose side is not a multiple of 32).
    """

    def __init__(self, num_classes: int, config: GCGLEConfig, deep_supervision: bool):
        dims = config.dims
        n_levels = len(dims) if config.four_level_decoder else len(dims) - 1
        level_indices = list(range(len(dims) - 1, len(dims) - 1 - n_levels, -1))
        heads = nn.ModuleList(nn.Conv2d(dims[i], num_classes, 1) for i in level_indices)
        heads.append(nn.Conv2d(dims[0], num_classes, 1, bias=False))
        scales = [[1 / 2 ** (i + 2)] * 2 for i in level_indices] + [[1.0, 1.0]]
        super().__init__(heads, scales, deep_supervision)
        self.up0 = PatchExpand(config.bottleneck_dim)
        self.levels = nn.ModuleList(
            GCGLEDecoderLevel(
                dims[i],
                depth,
                config,
                config.topks[i],
                config.region_sizes[i],
                upsample=k < n_levels - 1 or not config.four_level_decoder,
            )
            for k, (i, depth) in enumerate(zip(level_indices, config.decoder_depths))
        )
        self.norm_up = nn.LayerNorm(dims[0])
        self.up4 = PatchExpand(dims[0], scale=4, out_dim=dims[0])

    def decode_levels(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        full_size = [4 * side for side in skips[0].shape[-2:]]
        x = _nchw(self.up0(_nhwc(skips[-1])))
        features = []
        for level, skip, scale in zip(self.levels, skips[-2::-1], self.deep_supervision_scales[:0:-1]):
            x = level(x[..., : skip.shape[-2], : skip.shape[-1]], skip)
            # maps of odd-sized levels are rounded up by the strided convs; nnU-Net rounds its targets
            height, width = (round(side * s) for side, s in zip(full_size, scale))
            features.append(x[..., :height, :width])
            if level.upsample is not None:
                x = level.upsample_output(x)
        x = x[..., : skips[0].shape[-2], : skips[0].shape[-1]]
        full = self.up4(self.norm_up(_nhwc(x)))
        features.append(_nchw(full))
        return features


class GCGLENet(SegmentationNetwork):
    """GCGLE-Net for nnU-Net: (N, input_channels, H, W) -> (N, num_classes, H, W) logits (a list, highest
    resolution first, with deep supervision). H and W: multiples of 4.

    Args:
        input_channels: image channels (fed to the stem as they are).
        num_classes: output channels.
        config: :class:`GCGLEConfig` (faithfulness switches there).
        deep_supervision: return the logits of every decoder level too.
    """

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        config: GCGLEConfig = GCGLEConfig(),
        deep_supervision: bool = False,
    ):
        super().__init__(GCGLEEncoder(input_channels, config), GCGLEDecoder(num_classes, config, deep_supervision))
        self.config = config
        self.apply(init_transformer_weights)


def load_pretrained_encoder(network: GCGLENet, state_dict: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Load a BiFormer ImageNet state dict into the encoder, non-strictly: every tensor whose name (BiFormer's)
    exists in the encoder with the same shape is copied, the rest skipped (as the published ``load_from``).
    Returns (loaded names, skipped names)."""
    loaded = load_matching(network.encoder, state_dict)
    return loaded, sorted(set(state_dict) - set(loaded))
