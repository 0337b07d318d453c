"""nnU-Net's optimisation recipe as plain functions: its SGD, its gradient clipping and its supervised train step.

The trainers use them where a scheme builds an optimizer of its own (GuidedNet's second network); the benchmark uses
the supervised step to time a network without its scheme.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

#: nnU-Net's gradient clipping norm
GRADIENT_CLIP_NORM = 12


def nnunet_sgd(network: nn.Module, lr: float = 1e-2, weight_decay: float = 3e-5) -> torch.optim.SGD:
    """nnU-Net's optimizer: SGD with momentum 0.99, Nesterov; its defaults lr 1e-2, weight decay 3e-5."""
    return torch.optim.SGD(network.parameters(), lr=lr, momentum=0.99, nesterov=True, weight_decay=weight_decay)


def supervised_train_step(
    network: nn.Module,
    batch: torch.Tensor,
    targets: list[torch.Tensor],
    loss_fn: Callable[[object, list[torch.Tensor]], torch.Tensor],
    forward: Callable[[torch.Tensor], object] | None = None,
) -> Callable[[], None]:
    """nnU-Net's train step on a fixed ``batch`` (B, C, *S): forward (``network`` or ``forward``),
    ``loss_fn(outputs, targets)``, backward, clipping at :data:`GRADIENT_CLIP_NORM`, a :func:`nnunet_sgd` step."""
    forward = network if forward is None else forward
    optimizer = nnunet_sgd(network)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(forward(batch), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), GRADIENT_CLIP_NORM)
        optimizer.step()

    return train_step
