"""MGCC losses (official ``train.py`` and ``src/utils/losses.py``).

Published (binary, one sigmoid channel, batch = labeled half + unlabeled half)::

    L_sup  = 1/4 sum_{h in main, aux1..3} BCEDice(z_h[labeled], y)
    BCEDice(z, y) = 0.5 BCEWithLogits(z, y) + 1 - 1/B sum_b (2 sum p y + 1e-5) / (sum p + sum y + 1e-5),  p = sigmoid(z)
    L_cons = 1/3 sum_k mean((sigmoid(z_main) - sigmoid(z_aux_k))^2)            on the unlabeled half, no stop-grad
    L      = L_sup + lambda(t) L_cons,   lambda(t) = 7 sigmoid_rampup(t // 150, 200),  t the training iteration

Generalised to nnU-Net's label kinds (the binary case reduces to the published form exactly):

- label (softmax) training: ``0.5 CE + 1 - mean_{b, c >= 1} Dice_{b,c}(softmax, one-hot)``, the per-sample soft
  Dice averaged over samples and foreground classes. With two classes and logits ``(0, z)`` this is the published
  BCEDice of ``z``.
- region (sigmoid) training: ``0.5 BCE + 1 - mean_{b, r} Dice_{b,r}(sigmoid, region)`` over all region channels.
- consistency: MSE between probability maps (softmax over classes, or sigmoid per region), averaged over every
  element including background; for two softmax classes ``(p0 - q0)^2 = (p1 - q1)^2``, so it equals the published
  single-channel MSE.
- deep supervision: on the main decoder only, nnU-Net's :class:`DeepSupervisionWrapper` with nnU-Net's weights
  (the auxiliary heads give full-resolution logits and are supervised at full resolution).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from torch import nn

from nnunet_ext.ssl.ramps import ramped_weight

#: lambda_max of the consistency weight (``--consistency 7``) and its ramp length in steps of 150 iterations
CONSISTENCY_WEIGHT = 7.0
CONSISTENCY_RAMPUP = 200
#: the published run the ramp belongs to: ``max_iterations = 40000 * semi_percent`` at the default 0.5
PUBLISHED_ITERATIONS = 20_000
#: smoothing of the per-sample soft Dice (``BCEDiceLoss``)
DICE_SMOOTH = 1e-5
#: weight of the cross-entropy term of ``BCEDiceLoss``
CE_WEIGHT = 0.5

Output = torch.Tensor | list[torch.Tensor]


def consistency_weight(iteration: int) -> float:
    """``7 * sigmoid_rampup(iteration // 150, 200)`` for the 0-based training iteration."""
    return ramped_weight(CONSISTENCY_WEIGHT, iteration, CONSISTENCY_RAMPUP)


def probabilities(logits: torch.Tensor, regions: bool) -> torch.Tensor:
    """(B, C, *S) logits -> probabilities: per-channel sigmoid for regions, softmax over C for labels."""
    return torch.sigmoid(logits) if regions else torch.softmax(logits, dim=1)


class MGCCSupervisedLoss(nn.Module):
    """``0.5 CE + 1 - per-sample soft Dice`` (published ``BCEDiceLoss``, generalised as in the module docstring).

    ``logits`` (B, C, *S); ``target`` (B, 1, *S) class indices (labels) or (B, C, *S) binary maps (regions).
    Returns a scalar.
    """

    def __init__(self, regions: bool):
        super().__init__()
        self.regions = regions

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.regions:
            reference = target.to(logits.dtype)
            cross_entropy = F.binary_cross_entropy_with_logits(logits, reference)
            predicted = torch.sigmoid(logits)
        else:
            if logits.shape[1] < 2:
                raise ValueError(f"label (softmax) training needs at least 2 output channels, got {logits.shape[1]}")
            labels = target[:, 0].long()
            cross_entropy = F.cross_entropy(logits, labels)
            predicted = torch.softmax(logits, dim=1)[:, 1:]
            reference = F.one_hot(labels, logits.shape[1]).movedim(-1, 1)[:, 1:].to(logits.dtype)
        spatial = tuple(range(2, logits.ndim))
        intersection = (predicted * reference).sum(spatial)
        dice = (2 * intersection + DICE_SMOOTH) / (predicted.sum(spatial) + reference.sum(spatial) + DICE_SMOOTH)
        return CE_WEIGHT * cross_entropy + 1 - dice.mean()


def consistency_loss(main: torch.Tensor, aux: Sequence[torch.Tensor], regions: bool) -> torch.Tensor:
    """``1/K sum_k mean((P(main) - P(aux_k))^2)`` over probability maps P; gradients flow into both sides.

    ``main`` and each ``aux_k``: (U, C, *S) logits of the unlabeled samples.
    """
    reference = probabilities(main, regions)
    return torch.stack([F.mse_loss(reference, probabilities(a, regions)) for a in aux]).mean()


class MGCCObjective(nn.Module):
    """The MGCC training loss of one step.

    Args:
        regions: sigmoid/region training instead of softmax labels.
        deep_supervision_weights: nnU-Net's weights of the main decoder's outputs (highest resolution first); None
            without deep supervision.
    """

    def __init__(self, regions: bool, deep_supervision_weights: Sequence[float] | None = None):
        super().__init__()
        self.regions = regions
        self.head_loss = MGCCSupervisedLoss(regions)
        self.main_loss = (
            self.head_loss
            if deep_supervision_weights is None
            else DeepSupervisionWrapper(self.head_loss, deep_supervision_weights)
        )

    def forward(
        self, outputs: Sequence[Output], target: Output, num_labeled: int, weight: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """``(L_sup + weight * L_cons, terms)``.

        Args:
            outputs: ``(main, aux1, aux2, aux3)`` on the whole batch (labeled samples first); ``main`` a tensor
                (B, C, *S) or, with deep supervision, a list of them, highest resolution first; aux (B, C, *S).
            target: of the labeled samples: (L, 1 | C, *S), or one per deep-supervision output.
            num_labeled: L, the number of labeled samples at the front of the batch.
            weight: the consistency weight lambda(t) (:func:`consistency_weight`).
        """
        main, *aux = outputs
        main_full = main[0] if isinstance(main, (list, tuple)) else main
        target_full = target[0] if isinstance(target, (list, tuple)) else target
        main_labeled = [m[:num_labeled] for m in main] if isinstance(main, (list, tuple)) else main[:num_labeled]
        head_losses = [self.main_loss(main_labeled, target)]
        head_losses += [self.head_loss(a[:num_labeled], target_full) for a in aux]
        supervised = torch.stack(head_losses).mean()
        consistency = consistency_loss(main_full[num_labeled:], [a[num_labeled:] for a in aux], self.regions)
        total = supervised + weight * consistency
        return total, {"supervised": supervised, "consistency": consistency, "consistency_weight": weight}
