"""GCtx-UNet: a Swin-UNet-style U-Net of GC-ViT blocks (Alrfou & Zhao 2024, arXiv 2406.05891).

Faithful to the official ``Kalrfou/GCtx-UNet`` (``networks/GCtx_UNet.py`` @ 16489be), which builds on GC-ViT
(Hatamizadeh et al., ICML 2023, arXiv 2206.09959, ``NVlabs/GCVit``):

- patch embedding: Conv3x3 s2 -> ReduceSize (keep), i.e. /4;
- four encoder levels (dims d, 2d, 4d, 8d; depths 2,2,2,1; heads 2,4,8,16), each: global-query generator, GC-ViT
  blocks alternating local window attention (even block index) and global-query attention (odd), then a
  Fused-MBConv ReduceSize (C -> 2C, /2) except after the last level, whose output is layer-normed;
- a mirrored decoder: per level cat(x, skip) -> Linear(2C -> C), global-query generator, GC-ViT blocks, UpSize
  (bicubic x2, C -> C/2);
- PatchUnembed (two UpSize keep-dim, x4) and a 1x1 head without bias.

Parameter and state-dict tensor shapes equal the official ones, and the tensors carry the official names below the
``encoder``/``decoder`` split (see :func:`official_to_network_name`), so the official weights load by name. With
``mlp_ratio=4`` (the default, the published OCT run) the network has 14,081,304 parameters at 3 channels / 3
classes and 224^2 (12,341,784 with the official config's ``mlp_ratio=3``).

Generalisations (none changes the published 224^2 network):

- Any 2D patch size (rectangular too). The official windows [7, 7, 14, 7] follow the rule that levels 0, 1 and 3
  use windows of the size of the coarsest (level-3, /32) feature map and level 2 one window of its whole /16 map.
  The same rule is applied per axis to the patch: windows ``(H/32, W/32)`` at levels 0, 1, 3 and ``(H/16, W/16)`` at
  level 2 (rectangular windows get a ``(2 wh - 1)(2 ww - 1)`` relative-position-bias table). The global query is
  pooled to the window size with the official chain of stride-2 FeatExtract max-pools, ``log2(map / window)`` of
  them (3, 2, 0, 0; a keep-dim FeatExtract where none is needed, as the official code does). Patches not
  divisible by 32 are zero-padded at the end of each axis to the next multiple of 32 and every output is cropped
  back, so the network is built for the padded size.
- ``input_channels`` is honoured by the patch-embedding conv; the official wrapper instead repeats a 1-channel
  image to 3 channels, which ``repeat_grayscale=True`` reproduces (the official shape for 1-channel images).
- With ``deep_supervision`` the decoder also returns logits of the first two decoder levels (1/16, 1/8) and of the
  normalised last decoder level (1/4) through 1x1 heads; the official network has only the final head.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.regularization import DropPath
from torch import nn

from nnunet_ext.checkpoints import load_matching
from nnunet_ext.networks.common import SegmentationDecoder, SegmentationNetwork, init_transformer_weights

Window = tuple[int, int]

#: the encoder reduces the input by 4 (patch embedding) and then by 2 three times
TOTAL_STRIDE = 32
#: blocks per level; hard-coded in the official GCViT (the yaml DEPTHS only sets the drop-path schedule)
DEPTHS = (2, 2, 2, 1)


def permute_to_nhwc(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C): a view with the channels as the last axis (for LayerNorm and Linear layers)."""
    return x.permute(0, 2, 3, 1)


def permute_to_nchw(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, H, W): the inverse of :func:`permute_to_nhwc`."""
    return x.permute(0, 3, 1, 2)


def padded_size(patch_size: Sequence[int]) -> Window:
    """``patch_size`` rounded up to multiples of 32 per axis (the size the network computes on)."""
    if len(patch_size) != 2:
        raise ValueError(
            f"GCtx-UNet is a 2D network; got a {len(patch_size)}D patch {tuple(patch_size)}. Use a 2d configuration."
        )
    return tuple(math.ceil(s / TOTAL_STRIDE) * TOTAL_STRIDE for s in patch_size)


def level_windows(padded: Window) -> list[Window]:
    """Attention windows of encoder levels 0..3 for a (padded) input size: the official [7, 7, 14, 7] rule."""
    coarsest = (padded[0] // 32, padded[1] // 32)
    return [coarsest, coarsest, (padded[0] // 16, padded[1] // 16), coarsest]


def level_sizes(padded: Window) -> list[Window]:
    """Feature-map sizes of encoder levels 0..3 (/4, /8, /16, /32)."""
    return [(padded[0] // 2 ** (2 + i), padded[1] // 2 ** (2 + i)) for i in range(4)]


class SqueezeExcite(nn.Module):
    """GC-ViT's SE: ``x * sigmoid(W2 GELU(W1 GAP(x)))``, W1: C -> C/4, W2: C/4 -> C, no biases. (B, C, H, W)."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(dim, dim // 4, bias=False), nn.GELU(), nn.Linear(dim // 4, dim, bias=False), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class FusedMBConv(nn.Sequential):
    """DWConv3x3 (no bias) -> GELU -> SE -> Conv1x1 (no bias); (B, C, H, W) -> same (used as ``x + f(x)``)."""

    def __init__(self, dim: int):
        super().__init__(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False),
            nn.GELU(),
            SqueezeExcite(dim),
            nn.Conv2d(dim, dim, 1, bias=False),
        )


class ReduceSize(nn.Module):
    """LN -> x + FusedMBConv(x) -> Conv3x3 s2 (C -> C or 2C, no bias) -> LN. (B, H, W, C) -> (B, H/2, W/2, C')."""

    def __init__(self, dim: int, keep_dim: bool = False):
        super().__init__()
        dim_out = dim if keep_dim else 2 * dim
        self.norm1 = nn.LayerNorm(dim)
        self.conv = FusedMBConv(dim)
        self.reduction = nn.Conv2d(dim, dim_out, 3, stride=2, padding=1, bias=False)
        self.norm2 = nn.LayerNorm(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = permute_to_nchw(self.norm1(x))
        x = self.reduction(x + self.conv(x))
        return self.norm2(permute_to_nhwc(x))


class UpSize(nn.Module):
    """LN -> x + FusedMBConv(x) -> bicubic x2 -> Conv1x1 (C -> C or C/2, no bias) -> LN.

    (B, H, W, C) -> (B, 2H, 2W, C'); the official decoder upsampling (bicubic, align_corners False).
    """

    def __init__(self, dim: int, keep_dim: bool = False):
        super().__init__()
        dim_out = dim if keep_dim else dim // 2
        self.norm1 = nn.LayerNorm(dim)
        self.conv = FusedMBConv(dim)
        self.upsample = nn.Upsample(scale_factor=2, mode="bicubic", align_corners=False)
        self.expansion = nn.Conv2d(dim, dim_out, 1, bias=False)
        self.norm2 = nn.LayerNorm(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = permute_to_nchw(self.norm1(x))
        x = self.expansion(self.upsample(x + self.conv(x)))
        return self.norm2(permute_to_nhwc(x))


class FeatExtract(nn.Module):
    """``x + FusedMBConv(x)``, then MaxPool 3x3 s2 p1 when ``pool``. (B, C, H, W) -> (B, C, H or H/2, ...)."""

    def __init__(self, dim: int, pool: bool):
        super().__init__()
        self.conv = FusedMBConv(dim)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x + self.conv(x))


class PatchEmbed(nn.Module):
    """Conv3x3 s2 (bias) -> ReduceSize (keep dim): (B, C_in, H, W) -> (B, H/4, W/4, dim)."""

    def __init__(self, input_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(input_channels, dim, 3, stride=2, padding=1)
        self.conv_down = ReduceSize(dim, keep_dim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_down(permute_to_nhwc(self.proj(x)))


class PatchUnembed(nn.Module):
    """Two keep-dim UpSize: (B, H, W, C) -> (B, C, 4H, 4W)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_up = UpSize(dim, keep_dim=True)
        self.conv_up2 = UpSize(dim, keep_dim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return permute_to_nchw(self.conv_up2(self.conv_up(x)))


def relative_position_index(window: Window) -> torch.Tensor:
    """(N, N) index into a ``(2 wh - 1)(2 ww - 1)`` bias table, N = wh ww (Swin's relative position bias).

    Entry (i, j) encodes the offset of token i from token j: ``(dy + wh - 1) (2 ww - 1) + (dx + ww - 1)``.
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window[0]), torch.arange(window[1]), indexing="ij")).flatten(1)
    offsets = coords[:, :, None] - coords[:, None, :]
    return (offsets[0] + window[0] - 1) * (2 * window[1] - 1) + offsets[1] + window[1] - 1


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window with relative position bias (GC-ViT Eq. 1-2, local branch).

    ``softmax(q k^T / sqrt(d) + B) v`` with q, k, v = Linear(x); x: (B*nW, N, C) -> (B*nW, N, C), N = wh ww.
    """

    kv_only = False

    def __init__(self, dim: int, num_heads: int, window: Window):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window = window
        table_size = (2 * window[0] - 1) * (2 * window[1] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.empty(table_size, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * (2 if self.kv_only else 3))
        self.proj = nn.Linear(dim, dim)

    def relative_position_bias(self) -> torch.Tensor:
        """(heads, N, N) bias added to the attention logits."""
        return self.relative_position_bias_table[self.relative_position_index].permute(2, 0, 1)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: (B*nW, heads, N, head_dim) -> (B*nW, N, C)."""
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.relative_position_bias().unsqueeze(0)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).flatten(2))

    def split_heads(self, x: torch.Tensor, parts: int) -> torch.Tensor:
        """Linear projection of x (B_, N, C) split into (parts, B_, heads, N, head_dim)."""
        windows, tokens, _ = x.shape
        return self.qkv(x).reshape(windows, tokens, parts, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def forward(self, x: torch.Tensor, q_global: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self.split_heads(x, 3)
        return self.attend(q, k, v)


class WindowAttentionGlobal(WindowAttention):
    """Global-query attention (GC-ViT Eq. 3-4): keys/values from the window, the query from the whole image.

    ``q_global`` (B, heads, N, head_dim) is the image's pooled query, shared by all of that image's windows;
    x: (B*nW, N, C) with the windows of image b at rows b*nW .. (b+1)*nW - 1.
    """

    kv_only = True

    def forward(self, x: torch.Tensor, q_global: torch.Tensor) -> torch.Tensor:
        k, v = self.split_heads(x, 2)
        q = q_global.repeat_interleave(x.shape[0] // q_global.shape[0], dim=0)
        return self.attend(q, k, v)


class Mlp(nn.Module):
    """Linear C -> rC -> GELU -> Linear rC -> C."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def window_partition(x: torch.Tensor, window: Window) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/wh * W/ww, wh*ww, C), windows row-major per image, images consecutive."""
    b, h, w, c = x.shape
    x = x.view(b, h // window[0], window[0], w // window[1], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], c)


def window_reverse(windows: torch.Tensor, window: Window, size: Window) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B*nW, wh*ww, C) -> (B, H, W, C)."""
    h, w = size
    c = windows.shape[-1]
    x = windows.view(-1, h // window[0], w // window[1], window[0], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


class GCViTBlock(nn.Module):
    """``x + DP(Attn(LN(x)))``, then ``x + DP(MLP(LN(x)))`` on non-shifted windows. (B, H, W, C) -> same."""

    def __init__(
        self, dim: int, num_heads: int, window: Window, mlp_ratio: float, drop_path: float, global_query: bool
    ):
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim)
        self.attn = (WindowAttentionGlobal if global_query else WindowAttention)(dim, num_heads, window)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, q_global: torch.Tensor | None) -> torch.Tensor:
        windows = self.attn(window_partition(self.norm1(x), self.window), q_global)
        x = x + self.drop_path(window_reverse(windows, self.window, x.shape[1:3]))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class GlobalQueryGen(nn.Module):
    """Global query of a level: FeatExtract chain pooling the map to the window size, split into heads.

    (B, C, H, W) -> (B, heads, wh*ww, head_dim). ``n_pools`` stride-2 FeatExtracts (one keep-dim FeatExtract
    when 0), as in GC-ViT's generator (Fig. 5); tokens are ordered row-major like the window tokens.
    """

    def __init__(self, dim: int, num_heads: int, n_pools: int):
        super().__init__()
        self.num_heads = num_heads
        stages = [FeatExtract(dim, pool=True) for _ in range(n_pools)] or [FeatExtract(dim, pool=False)]
        self.to_q_global = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = permute_to_nhwc(self.to_q_global(x))
        b, c = q.shape[0], q.shape[-1]
        return q.reshape(b, -1, self.num_heads, c // self.num_heads).transpose(1, 2)


class GCViTLayer(nn.Module):
    """Global-query generator + ``depth`` GC-ViT blocks (local attention at even, global at odd indices).

    (B, H, W, C) -> (B, H, W, C); subclasses add the resampling of encoder or decoder levels.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        size: Window,
        window: Window,
        mlp_ratio: float,
        drop_paths: Sequence[float],
    ):
        super().__init__()
        if size[0] % window[0] or size[1] % window[1]:
            raise ValueError(f"feature map {size} is not divisible into windows {window}")
        pools = math.log2(size[0] // window[0])
        if not pools.is_integer() or size[0] // window[0] != size[1] // window[1]:
            raise ValueError(f"feature map {size} cannot be max-pooled by stride-2 steps to the window {window}")
        self.blocks = nn.ModuleList(
            GCViTBlock(dim, num_heads, window, mlp_ratio, drop_paths[j], global_query=j % 2 == 1) for j in range(depth)
        )
        self.q_global_gen = GlobalQueryGen(dim, num_heads, int(pools))
        self.uses_global_query = depth > 1
        if not self.uses_global_query:
            # one local block (the last level, as in GC-ViT): the generator is kept for the weights' layout but
            # neither run nor trained, so that DDP (nnU-Net's find_unused_parameters=False) waits for no gradient
            self.q_global_gen.requires_grad_(False)

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        q_global = self.q_global_gen(permute_to_nchw(x)) if self.uses_global_query else None
        for block in self.blocks:
            x = block(x, q_global)
        return x


class EncoderLevel(GCViTLayer):
    """GC-ViT layer followed by ReduceSize (C -> 2C, /2) unless it is the last level."""

    def __init__(self, dim: int, *args, downsample: bool, **kwargs):
        super().__init__(dim, *args, **kwargs)
        self.downsample = ReduceSize(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.run_blocks(x)
        return x if self.downsample is None else self.downsample(x)


class DecoderLevel(GCViTLayer):
    """GC-ViT layer followed by UpSize (C -> C/2, x2) unless it is the last level."""

    def __init__(self, dim: int, *args, upsample: bool, **kwargs):
        super().__init__(dim, *args, **kwargs)
        self.upsample = UpSize(dim) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.run_blocks(x)
        return x if self.upsample is None else self.upsample(x)


def crop_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The first ``size`` entries of the spatial axes of an NCHW tensor (undoes end-padding)."""
    return x[..., : size[0], : size[1]]


class GCtxEncoder(nn.Module):
    """Patch embedding + four GC-ViT levels. (B, C_in, H, W) -> skips, finest first, NCHW:

    ``[(B, d, H/4, W/4), (B, 2d, H/8, W/8), (B, 4d, H/16, W/16), bottleneck (B, 8d, H/32, W/32)]`` (sizes of the
    padded input). The first three are the inputs of levels 0..2 (the official ``x_downsample``); the bottleneck
    is the layer-normed output of level 3.
    """

    def __init__(
        self,
        input_channels: int,
        patch_size: Window,
        embed_dim: int,
        num_heads: Sequence[int],
        mlp_ratio: float,
        drop_paths: Sequence[float],
        repeat_grayscale: bool,
    ):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.padded_size = padded_size(patch_size)
        if repeat_grayscale and input_channels != 1:
            raise ValueError(f"repeat_grayscale applies to 1-channel input only, got {input_channels} channels")
        self.repeat_grayscale = repeat_grayscale
        self.patch_embed = PatchEmbed(3 if repeat_grayscale else input_channels, embed_dim)
        sizes, windows = level_sizes(self.padded_size), level_windows(self.padded_size)
        bounds = [sum(DEPTHS[:i]) for i in range(len(DEPTHS) + 1)]
        self.levels = nn.ModuleList(
            EncoderLevel(
                embed_dim * 2**i,
                DEPTHS[i],
                num_heads[i],
                sizes[i],
                windows[i],
                mlp_ratio,
                drop_paths[bounds[i] : bounds[i + 1]],
                downsample=i < len(DEPTHS) - 1,
            )
            for i in range(len(DEPTHS))
        )
        self.norm = nn.LayerNorm(embed_dim * 2 ** (len(DEPTHS) - 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if tuple(x.shape[2:]) != self.patch_size:
            raise ValueError(
                f"GCtx-UNet was built for patches of {self.patch_size} (its windows depend on it), "
                f"got {tuple(x.shape[2:])}"
            )
        pad = (self.padded_size[0] - x.shape[2], self.padded_size[1] - x.shape[3])
        if any(pad):
            x = F.pad(x, (0, pad[1], 0, pad[0]))
        if self.repeat_grayscale:
            x = x.repeat(1, 3, 1, 1)
        x = self.patch_embed(x)
        skips = []
        for level in self.levels:
            skips.append(permute_to_nchw(x))
            x = level(x)
        return [*skips[:-1], permute_to_nchw(self.norm(x))]


class GCtxDecoder(SegmentationDecoder):
    """Mirrored GC-ViT decoder, PatchUnembed and the 1x1 head (official head: no bias).

    Decoder levels, coarse to fine (each a head input): output of ``layers_up[0]`` (4d @ /16) and ``layers_up[1]``
    (2d @ /8), ``norm_up(layers_up[3])`` (d @ /4) and the PatchUnembed output (d @ /1, the final features).
    """

    def __init__(
        self,
        num_classes: int,
        patch_size: Window,
        embed_dim: int,
        num_heads: Sequence[int],
        mlp_ratio: float,
        drop_paths: Sequence[float],
        deep_supervision: bool,
    ):
        n = len(DEPTHS)
        dims = [embed_dim * 2 ** (n - 1 - k) for k in range(n)]
        heads = nn.ModuleList([nn.Conv2d(dims[0] // 2, num_classes, 1), nn.Conv2d(dims[1] // 2, num_classes, 1)])
        heads.append(nn.Conv2d(embed_dim, num_classes, 1))
        heads.append(nn.Conv2d(embed_dim, num_classes, 1, bias=False))
        scales = [1 / 16, 1 / 8, 1 / 4, 1.0]
        super().__init__(heads, [[s, s] for s in scales], deep_supervision)
        self.output_sizes = [tuple(round(p * s) for p in patch_size) for s in scales]
        padded = padded_size(patch_size)
        sizes, windows = level_sizes(padded), level_windows(padded)
        bounds = [sum(DEPTHS[:i]) for i in range(n + 1)]
        self.layers_up = nn.ModuleList(
            DecoderLevel(
                dims[k],
                DEPTHS[n - 1 - k],
                num_heads[n - 1 - k],
                sizes[n - 1 - k],
                windows[n - 1 - k],
                mlp_ratio,
                drop_paths[bounds[n - 1 - k] : bounds[n - k]],
                upsample=k < n - 1,
            )
            for k in range(n)
        )
        self.concat_back_dim = nn.ModuleList([nn.Identity()] + [nn.Linear(2 * dims[k], dims[k]) for k in range(1, n)])
        self.norm_up = nn.LayerNorm(embed_dim)
        self.up = PatchUnembed(embed_dim)

    def decode_levels(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        x = permute_to_nhwc(skips[-1])
        levels = []
        for k, (layer, concat) in enumerate(zip(self.layers_up, self.concat_back_dim)):
            if k > 0:
                x = concat(torch.cat([x, permute_to_nhwc(skips[len(skips) - 1 - k])], dim=-1))
            x = layer(x)
            if k < 2:
                levels.append(permute_to_nchw(x))
        x = self.norm_up(x)
        levels.append(permute_to_nchw(x))
        levels.append(self.up(x))
        return [crop_to(level, size) for level, size in zip(levels, self.output_sizes)]


class GCtxUNet(SegmentationNetwork):
    """GCtx-UNet for nnU-Net: ``(B, input_channels, H, W) -> (B, num_classes, H, W)`` logits (list with DS).

    Args:
        input_channels: image channels.
        num_classes: output channels.
        patch_size: (H, W) the network is built for (windows and query pooling depend on it); default 224^2.
        embed_dim: channels of level 0 (official 64).
        num_heads: heads per level (official 2, 4, 8, 16).
        mlp_ratio: MLP expansion; 4 (default) as in the published OCT run, 3 in the official config.
        drop_path_rate: stochastic depth, linear over the 7 encoder blocks and reused by the mirrored decoder.
        repeat_grayscale: 1-channel input repeated to 3 channels before a 3-channel embedding (official wrapper).
        deep_supervision: return logits at 1, 1/4, 1/8, 1/16 (highest resolution first).
    """

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        patch_size: Sequence[int] = (224, 224),
        embed_dim: int = 64,
        num_heads: Sequence[int] = (2, 4, 8, 16),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        repeat_grayscale: bool = False,
        deep_supervision: bool = False,
    ):
        patch_size = tuple(int(s) for s in patch_size)
        drop_paths = torch.linspace(0, drop_path_rate, sum(DEPTHS)).tolist()
        super().__init__(
            GCtxEncoder(input_channels, patch_size, embed_dim, num_heads, mlp_ratio, drop_paths, repeat_grayscale),
            GCtxDecoder(num_classes, patch_size, embed_dim, num_heads, mlp_ratio, drop_paths, deep_supervision),
        )
        self.apply(init_transformer_weights)


#: first component of an official ``GCViT`` state-dict name -> our module path
OFFICIAL_MODULES = {
    "patch_embed": "encoder.patch_embed",
    "levels": "encoder.levels",
    "norm": "encoder.norm",
    "layers_up": "decoder.layers_up",
    "concat_back_dim": "decoder.concat_back_dim",
    "norm_up": "decoder.norm_up",
    "up": "decoder.up",
    "output": "decoder.seg_heads.3",
}


def official_to_network_name(name: str) -> str | None:
    """Our state-dict name of an official tensor (``model.`` prefix of ``GCViT_Unet`` optional), else None."""
    name = name.removeprefix("model.")
    first, _, rest = name.partition(".")
    if first not in OFFICIAL_MODULES or not rest:
        return None
    return f"{OFFICIAL_MODULES[first]}.{rest}"


def load_gcvit_encoder_weights(
    network: GCtxUNet, checkpoint_state: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str]]:
    """Initialise ``network`` from a GC-ViT ImageNet state dict, as the official ``load_from`` does.

    Tensors are matched by name and shape; every ``levels.i.*`` tensor is also copied to ``layers_up.(3-i).*``,
    so the decoder starts as a mirror of the encoder (Swin-Unet practice). A 3-channel patch-embedding kernel is
    summed over its input channels for a 1-channel network (the same function as repeating the gray image to
    RGB). Returns (our names loaded, checkpoint names skipped).
    """
    candidates = dict(checkpoint_state)
    for name, tensor in checkpoint_state.items():
        if name.startswith("levels."):
            level, _, rest = name.removeprefix("levels.").partition(".")
            candidates[f"layers_up.{len(DEPTHS) - 1 - int(level)}.{rest}"] = tensor
    gray = network.encoder.patch_embed.proj.in_channels == 1
    ours = {}
    for name, tensor in candidates.items():
        target = official_to_network_name(name)
        if target == "encoder.patch_embed.proj.weight" and gray and tensor.shape[1] == 3:
            tensor = tensor.sum(dim=1, keepdim=True)
        if target is not None:
            ours[target] = tensor
    loaded = load_matching(network, ours)
    skipped = [name for name in checkpoint_state if official_to_network_name(name) not in loaded]
    return loaded, skipped
