"""Why CMUNeXt runs channels-last: forward+backward time of its blocks in both memory layouts.

``python -m nnunet_ext.benchmark.memory_format [--threads 2] [--repeats 3]`` prints, for each CMUNeXt encoder
stage at a 256x256 input (batch 4), the median wall time of a forward and backward pass of that stage's block with
its input in the default contiguous (NCHW) layout and in channels-last (NHWC) layout. The block is the same module
with the same weights; only the layout of its input differs (layers inherit it), so outputs are identical.
"""

from __future__ import annotations

import torch
from torch import nn

from nnunet_ext.benchmark.measure import forward_backward_ms, micro_benchmark_arguments
from nnunet_ext.networks.cmunext import CMUNEXT_VARIANTS, CMUNeXtBlock

INPUT_SIZE = 256
BATCH_SIZE = 4


def block_step_ms(block: nn.Module, x: torch.Tensor, memory_format: torch.memory_format, repeats: int) -> float:
    """Median milliseconds of ``block(x).sum().backward()`` with ``x`` in ``memory_format``."""
    return forward_backward_ms(block, x.contiguous(memory_format=memory_format).requires_grad_(), repeats)


def main(argv: list[str] | None = None) -> None:
    args = micro_benchmark_arguments(__doc__, argv)
    config = CMUNEXT_VARIANTS["cmunext"]
    print(f"CMUNeXt blocks, batch {BATCH_SIZE}, {args.threads} threads: forward+backward ms")
    print("| stage | input | kernel | NCHW ms | channels-last ms | speed-up |")
    print("|---|---|---|---|---|---|")
    for stage, (dim, depth, kernel) in enumerate(zip(config.dims, config.depths, config.kernels)):
        size = INPUT_SIZE // 2**stage
        block = CMUNeXtBlock(dim, dim, depth, kernel, nn.Conv2d)
        x = torch.randn(BATCH_SIZE, dim, size, size)
        contiguous = block_step_ms(block, x, torch.contiguous_format, args.repeats)
        channels_last = block_step_ms(block, x, torch.channels_last, args.repeats)
        print(
            f"| {stage} | {dim}x{size}x{size} | {kernel} | {contiguous:.0f} | {channels_last:.0f} "
            f"| {contiguous / channels_last:.1f}x |"
        )


if __name__ == "__main__":
    main()
