"""Batch statistics over DDP ranks.

Under ``nnUNetv2_train -num_gpus N`` each rank holds its share of the batch. A loss term defined on a statistic of
the whole batch (a weighted mean's normaliser, class counts, prototypes summed over patches) takes a
``sum_over_ranks`` callable and applies it to its per-rank sums, so every rank computes the global batch's value, as
nnU-Net's batch Dice gathers its sums; with one process the callable is :func:`single_process`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: ``tensor -> its sum over the ranks`` (same shape), differentiable
RankSum = Callable[[torch.Tensor], torch.Tensor]


def single_process(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over one rank: ``tensor`` itself."""
    return tensor
