"""Bi-level routing attention (BRA, BiFormer, Zhu et al., CVPR 2023) and full attention with LePE.

Both take and return channels-last maps ``(N, H, W, C)``, as BiFormer's ``bra.py``. Parameter names and shapes
equal BiFormer's (``qkv.qkv``, ``lepe``, ``wo``; ``qkv``, ``proj``, ``lepe``), so its checkpoints load by name.

Generalisation of BiFormer's fixed ``n_win x n_win`` region grid: the grid is chosen per call from the map size
(:func:`region_grid`), so any (rectangular) feature map works without padding; regions may be rectangular.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter

from nnunet_ext.networks.depthwise import DepthwiseConv2d


def _count_cpu_attention_flops() -> None:
    """Teach ``FlopCounterMode`` the CPU kernels of ``scaled_dot_product_attention``.

    torch counts the CUDA attention kernels but not ``_scaled_dot_product_flash_attention_for_cpu`` (and its
    backward), so CPU counts of attention networks would miss the attention matmuls. The formulas are torch's own
    (2 FLOPs per multiply-add of ``q k^T`` and ``attn v``). Registers nothing where torch already counts them.
    """
    aten = torch.ops.aten
    formulas = {
        aten._scaled_dot_product_flash_attention_for_cpu: flop_counter.sdpa_flop,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: flop_counter.sdpa_backward_flop,
    }
    for op, formula in formulas.items():
        if op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(op)(formula.__wrapped__)


_count_cpu_attention_flops()


def region_grid(size: tuple[int, int], region_size: int) -> tuple[int, int]:
    """Number of routing regions per axis for a map of ``size``: regions of about ``region_size`` pixels a side.

    Per axis, the divisor ``n`` of the axis length closest to ``length / region_size`` (ties: fewer regions), so
    the regions tile the map exactly. GCGLE-Net's published grids are reproduced: with region sizes 8, 4, 2 at
    1/4, 1/8, 1/16 of the input, a 224 patch gives 7 regions per axis at every stage, a 256 patch 8.
    """
    grid = []
    for length in size:
        target = length / region_size
        divisors = [n for n in range(1, length + 1) if length % n == 0]
        grid.append(min(divisors, key=lambda n: (abs(n - target), n)))
    return grid[0], grid[1]


def _to_regions(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, H, W, C) -> (N, nh*nw, rh*rw, C): pixels grouped by region, regions in row-major order."""
    n, h, w, c = x.shape
    nh, nw = grid
    x = x.reshape(n, nh, h // nh, nw, w // nw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, nh * nw, (h // nh) * (w // nw), c)


def _region_means(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, H, W, C) -> (N, nh*nw, C): the mean of each region, regions in row-major order. Two single-axis means
    (equal-sized regions): on CPU a reduction over the two non-adjacent axes at once is ~10x slower."""
    n, h, w, c = x.shape
    nh, nw = grid
    return x.reshape(n, nh, h // nh, nw, w // nw, c).mean(4).mean(2).reshape(n, nh * nw, c)


def _from_regions(x: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`_to_regions`: (N, nh*nw, rh*rw, C) -> (N, H, W, C)."""
    n, _, _, c = x.shape
    (nh, nw), (h, w) = grid, size
    x = x.reshape(n, nh, nw, h // nh, w // nw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h, w, c)


class QKVLinear(nn.Module):
    """One Linear ``C -> qk + qk + C`` (BiFormer's ``QKVLinear``); returns q, k, v."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(x).split(self.dim, dim=-1)
        return q, k, v


BRAKernel = Literal["auto", "gather", "masked"]


def masked_kernel_is_faster(regions: int, pixels_per_region: int, topk: int) -> bool:
    """The ``"auto"`` choice of :class:`BiLevelRoutingAttention`: the masked dense kernel where routing selects every
    region, or where regions hold at most 4 pixels and the dense attention does at most 16x the routed FLOPs.

    Measured forward+backward on CPU (2 threads, batch 4, ``python -m nnunet_ext.benchmark.kernels``): with 2x2
    regions the gather kernel spends its time in per-region overhead (4 queries per region and head) and the masked
    kernel is 1.2-4x faster up to ``regions / topk = 25`` (slower at 32); with 4x4 or 8x8 regions the gather
    kernel is faster even at ``regions / topk = 6``.
    """
    return topk >= regions or (pixels_per_region <= 4 and regions <= 16 * topk)


class BiLevelRoutingAttention(nn.Module):
    """BRA: region-to-region top-k routing, then pixel attention to the gathered regions, plus LePE.

    ``(N, H, W, C) -> (N, H, W, C)``. With regions ``r`` (grid from :func:`region_grid`) and ``qk_dim = C``:

    1. ``q, k, v = qkv(x)``; region descriptors ``q_r, k_r`` = mean of q, k over each region's pixels.
    2. Routing (paper Eq. 3-4): ``A_r = (q_r * s) k_r^T`` with ``s = C^-1/2`` (the full width, as the official
       code), computed without gradient; ``I_r = topk(A_r)`` region indices per region.
    3. Token attention (Eq. 5-6): every pixel of region i attends, per head, to the k, v of the pixels of the
       regions ``I_r[i]``: ``softmax(q k^T * s) v`` (``scaled_dot_product_attention``).
    4. ``O = wo(attention + LePE(v))``, LePE a depthwise ``side_dwconv`` conv on the V map (Eq. 6).

    ``topk`` larger than the number of regions is clamped (every region is then attended: full attention).

    Step 3 has two kernels with the same result: ``"gather"`` gathers the routed regions' keys and values per
    region (one batched gather; the paper's computation and FLOP count), ``"masked"`` runs dense attention over the
    whole map with the keys of unrouted regions masked out (more FLOPs in larger matmuls, no gather). ``"auto"``
    (default) picks per call and device with :meth:`kernel_for`: on the CPU the measured rule
    :func:`masked_kernel_is_faster`; on CUDA always ``"gather"``, whose unmasked ``scaled_dot_product_attention``
    calls may run torch's fused flash/memory-efficient kernels (a boolean mask excludes the flash kernel, and the
    masked kernel's dense FLOPs are what those kernels would save).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        topk: int,
        region_size: int,
        side_dwconv: int = 5,
        kernel: BRAKernel = "auto",
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"BRA width {dim} is not divisible by {num_heads} heads")
        if kernel not in get_args(BRAKernel):
            raise ValueError(f"BRA kernel must be one of {get_args(BRAKernel)}, got {kernel!r}")
        self.dim, self.num_heads, self.topk, self.region_size = dim, num_heads, topk, region_size
        self.kernel = kernel
        self.scale = dim**-0.5
        self.qkv = QKVLinear(dim)
        self.lepe = DepthwiseConv2d(dim, side_dwconv)
        self.wo = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        h, w = x.shape[1:3]
        if grid is None:
            grid = region_grid((h, w), self.region_size)
        if h % grid[0] or w % grid[1]:
            raise ValueError(f"a {h}x{w} map cannot be split into {grid[0]}x{grid[1]} regions")
        q, k, v = self.qkv(x)
        index = self._route(q, k, grid)
        kernel = self.kernel_for((h, w), grid, x.device.type)
        attention = self._masked_attention if kernel == "masked" else self._gathered_attention
        attended = attention(q, k, v, index, grid)
        lepe = self.lepe(v.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)
        return self.wo(attended + lepe)

    def kernel_for(self, size: tuple[int, int], grid: tuple[int, int], device_type: str = "cpu") -> str:
        """``"gather"`` or ``"masked"``: the kernel a call on a ``size`` map split into ``grid`` regions runs on a
        device of ``device_type`` (``"cpu"``, ``"cuda"``, ...)."""
        if self.kernel != "auto":
            return self.kernel
        if device_type != "cpu":
            return "gather"
        regions, pixels = grid[0] * grid[1], (size[0] // grid[0]) * (size[1] // grid[1])
        return "masked" if masked_kernel_is_faster(regions, pixels, min(self.topk, regions)) else "gather"

    def _route(self, q: torch.Tensor, k: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(N, H, W, C) q, k -> (N, regions, topk) indices of the regions each region attends to (Eq. 3-4)."""
        with torch.no_grad():
            q_r, k_r = (_region_means(t, grid) for t in (q, k))
            logits = (q_r * self.scale) @ k_r.transpose(-2, -1)
            return logits.topk(min(self.topk, logits.shape[-1]), dim=-1).indices

    def _split_heads(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        """(..., C) with ``batch`` leading rows -> (batch, heads, tokens, C / heads)."""
        return t.reshape(batch, -1, self.num_heads, self.dim // self.num_heads).transpose(1, 2)

    def _merge_heads(self, t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """(batch, heads, tokens, C / heads) -> ``shape`` (..., C)."""
        return t.transpose(1, 2).reshape(shape)

    def _gathered_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Eq. 5-6 with the routed regions' keys and values gathered per region; (N, H, W, C) -> same.

        The gather is one ``index_select`` over the (image, region) rows: its backward (``index_add``) is ~5x
        faster on CPU than that of advanced indexing (``index_put`` with accumulation)."""
        n, h, w, c = q.shape
        q_pix, k_pix, v_pix = (_to_regions(t, grid) for t in (q, k, v))
        regions, pixels = q_pix.shape[1], q_pix.shape[2]
        rows = (index + regions * torch.arange(n, device=q.device)[:, None, None]).flatten()

        def gather(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n * regions, pixels * c).index_select(0, rows)

        attended = F.scaled_dot_product_attention(
            *(self._split_heads(t, n * regions) for t in (q_pix, gather(k_pix), gather(v_pix))),
            scale=self.scale,
        )
        return _from_regions(self._merge_heads(attended, (n, regions, pixels, c)), grid, (h, w))

    def _masked_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Eq. 5-6 as dense attention of every pixel to every pixel, keys outside the routed regions masked out
        (their softmax weight is exactly 0); (N, H, W, C) -> same."""
        n, h, w, c = q.shape
        routed = torch.zeros(n, grid[0] * grid[1], grid[0] * grid[1], dtype=torch.bool, device=q.device)
        routed.scatter_(-1, index, True)
        rows = torch.arange(h, device=q.device) // (h // grid[0])
        cols = torch.arange(w, device=q.device) // (w // grid[1])
        region_of_pixel = (rows[:, None] * grid[1] + cols[None, :]).flatten()
        mask = routed[:, region_of_pixel][:, :, region_of_pixel]
        attended = F.scaled_dot_product_attention(
            *(self._split_heads(t, n) for t in (q, k, v)), attn_mask=mask[:, None], scale=self.scale
        )
        return self._merge_heads(attended, (n, h, w, c))


class AttentionLePE(nn.Module):
    """Full multi-head self-attention plus LePE (BiFormer's ``AttentionLePE``, its ``topk = -2`` blocks).

    ``(N, H, W, C) -> (N, H, W, C)``: ``proj(softmax(q k^T / sqrt(d)) v + LePE(x))`` with ``qkv`` without bias and
    LePE a depthwise conv of the block input, head width ``d = C / heads``.
    """

    def __init__(self, dim: int, num_heads: int, side_dwconv: int = 5):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.lepe = DepthwiseConv2d(dim, side_dwconv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape
        qkv = self.qkv(x).reshape(n, h * w, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        attended = attended.transpose(1, 2).reshape(n, h, w, c)
        return self.proj(attended + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
