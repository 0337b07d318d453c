"""Why GCGLE-Net computes two of its layers the way it does: CPU timings of the alternatives.

``python -m nnunet_ext.benchmark.kernels [--threads 2] [--repeats 3]`` prints two tables (batch 4, median wall time):

1. The forward pass and weight gradient of a depthwise 5x5 convolution (channels-last input, as in the network),
   the weight gradient computed by one ``aten.convolution_backward`` call and by
   :class:`~nnunet_ext.networks.depthwise.DepthwiseConv2d`'s blocks of 384 channels, at the widths and map sizes
   of GCGLE-Net's Local Extraction Blocks (224 and 256 patches).
2. Forward+backward of bi-level routing attention with its ``"gather"`` and ``"masked"`` kernels at GCGLE-Net's
   three stages for 224 and 256 patches and at the 1/16 stage of a 512 patch, with the ``"auto"`` choice.
"""

from __future__ import annotations

import torch

from nnunet_ext.benchmark.measure import forward_backward_ms, micro_benchmark_arguments
from nnunet_ext.networks.attention.bra import BiLevelRoutingAttention, region_grid
from nnunet_ext.networks.depthwise import DepthwiseConv2d

BATCH_SIZE = 4
DEPTHWISE_SHAPES = [(1536, 14), (1536, 16), (768, 14), (768, 28), (768, 32), (384, 56)]
"""(channels, map side) of the LEB depthwise convolutions: hidden width 4C at 1/4, 1/8, 1/16 of 224 and 256."""
BRA_STAGES = [(96, 56, 8, 2), (192, 28, 4, 4), (384, 14, 2, 8), (96, 64, 8, 2), (192, 32, 4, 4), (384, 16, 2, 8)]
BRA_STAGES += [(384, 32, 2, 8)]
"""(channels, map side, region size, top-k) of GCGLE-Net's stages at 224, 256, and the 1/16 stage at 512."""


def depthwise_weight_gradient_ms(channels: int, side: int, blockwise: bool, repeats: int) -> float:
    """Median ms of the forward pass and weight gradient (the input needs none) of a 5x5 depthwise convolution."""
    conv = DepthwiseConv2d(channels, 5, bias=False)
    conv.blockwise_weight_gradient = blockwise
    x = torch.randn(BATCH_SIZE, channels, side, side).contiguous(memory_format=torch.channels_last)
    return forward_backward_ms(conv, x, repeats)


def bra(dim: int, region_size: int, topk: int, kernel: str) -> BiLevelRoutingAttention:
    """One BRA layer with 32-wide heads, as in GCGLE-Net."""
    return BiLevelRoutingAttention(dim, dim // 32, topk, region_size, kernel=kernel)


def main(argv: list[str] | None = None) -> None:
    args = micro_benchmark_arguments(__doc__, argv)
    torch.manual_seed(0)
    print(f"Depthwise 5x5 forward + weight gradient, batch {BATCH_SIZE}, channels-last, {args.threads} threads (ms)")
    print("| channels | map | one call | blocks of 384 | speed-up | DepthwiseConv2d uses |")
    print("|---|---|---|---|---|---|")
    for channels, side in DEPTHWISE_SHAPES:
        whole = depthwise_weight_gradient_ms(channels, side, False, args.repeats)
        blocks = depthwise_weight_gradient_ms(channels, side, True, args.repeats)
        choice = "blocks" if DepthwiseConv2d(channels, 5).blockwise_weight_gradient else "one call"
        print(f"| {channels} | {side}x{side} | {whole:.1f} | {blocks:.1f} | {whole / blocks:.1f}x | {choice} |")
    print(f"\nBi-level routing attention forward+backward, batch {BATCH_SIZE}, {args.threads} threads (ms)")
    print("| channels | map | regions | pixels/region | top-k | gather | masked | auto picks |")
    print("|---|---|---|---|---|---|---|---|")
    for dim, side, region_size, topk in BRA_STAGES:
        grid = region_grid((side, side), region_size)
        regions, pixels = grid[0] * grid[1], (side // grid[0]) * (side // grid[1])
        x = torch.randn(BATCH_SIZE, side, side, dim, requires_grad=True)
        gather = forward_backward_ms(bra(dim, region_size, topk, "gather"), x, args.repeats)
        masked = forward_backward_ms(bra(dim, region_size, topk, "masked"), x, args.repeats)
        choice = bra(dim, region_size, topk, "auto").kernel_for((side, side), grid)
        print(f"| {dim} | {side}x{side} | {regions} | {pixels} | {topk} | {gather:.1f} | {masked:.1f} | {choice} |")


if __name__ == "__main__":
    main()
