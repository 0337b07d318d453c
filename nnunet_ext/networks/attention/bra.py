"""Bi-level routing attention (BRA, BiFormer, Zhu et al., CVPR 2023) and full attention with LePE.

Both take and return channels-last maps ``(N, H, W, C)``, as BiFormer's ``bra.py``. Parameter names and shapes
equal BiFormer's (``qkv.qkv``, ``lepe``, ``wo``; ``qkv``, ``proj``, ``lepe``), so its checkpoints load by name.

Generalisation of BiFormer's fixed ``n_win x n_win`` region grid: the grid is chosen per call from the map size
(:func:`region_grid`), so any (rectangular) feature map works without padding; regions may be rectangular.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter


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


class BiLevelRoutingAttention(nn.Module):
    """BRA: region-to-region top-k routing, then pixel attention to the gathered regions, plus LePE.

    ``(N, H, W, C) -> (N, H, W, C)``. With regions ``r`` (grid from :func:`region_grid`) and ``qk_dim = C``:

    1. ``q, k, v = qkv(x)``; region descriptors ``q_r, k_r`` = mean of q, k over each region's pixels.
    2. Routing (paper Eq. 3-4): ``A_r = (q_r * s) k_r^T`` with ``s = C^-1/2`` (the full width, as the official
       code), computed without gradient; ``I_r = topk(A_r)`` region indices per region.
    3. Token attention (Eq. 5-6): every pixel of region i attends, per head, to the k, v of the pixels of the
       regions ``I_r[i]`` (one batched gather), ``softmax(q k^T * s) v`` (``scaled_dot_product_attention``).
    4. ``O = wo(attention + LePE(v))``, LePE a depthwise ``side_dwconv`` conv on the V map (Eq. 6).

    ``topk`` larger than the number of regions is clamped (every region is then attended: full attention).
    """

    def __init__(self, dim: int, num_heads: int, topk: int, region_size: int, side_dwconv: int = 5):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"BRA width {dim} is not divisible by {num_heads} heads")
        self.dim, self.num_heads, self.topk, self.region_size = dim, num_heads, topk, region_size
        self.scale = dim**-0.5
        self.qkv = QKVLinear(dim)
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
        self.wo = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        n, h, w, c = x.shape
        if grid is None:
            grid = region_grid((h, w), self.region_size)
        if h % grid[0] or w % grid[1]:
            raise ValueError(f"a {h}x{w} map cannot be split into {grid[0]}x{grid[1]} regions")
        q, k, v = self.qkv(x)
        q_pix, k_pix, v_pix = (_to_regions(t, grid) for t in (q, k, v))
        regions, pixels = q_pix.shape[1], q_pix.shape[2]
        with torch.no_grad():
            logits = (q_pix.mean(2) * self.scale) @ k_pix.mean(2).transpose(-2, -1)
            index = logits.topk(min(self.topk, regions), dim=-1).indices
        batch = torch.arange(n, device=x.device)[:, None, None]
        heads, head_dim = self.num_heads, c // self.num_heads

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n * regions, -1, heads, head_dim).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            split_heads(q_pix), split_heads(k_pix[batch, index]), split_heads(v_pix[batch, index]), scale=self.scale
        )
        attended = attended.transpose(1, 2).reshape(n, regions, pixels, c)
        lepe = self.lepe(v.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)
        return self.wo(_from_regions(attended, grid, (h, w)) + lepe)


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
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape
        qkv = self.qkv(x).reshape(n, h * w, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        attended = attended.transpose(1, 2).reshape(n, h, w, c)
        return self.proj(attended + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
