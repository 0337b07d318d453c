"""KT-CPS of GuidedNet (Zhao et al., ACM MM 2024, arXiv 2408.04914): class-weighted cross pseudo supervision.

As in the official ``KTCPS`` (``utils/tools.py``, kimjisoo12/GuidedNet@3def342):

- counts ``n_k`` = labeled voxels with ``argmax(prediction) == label == k``; every wrongly predicted voxel counts
  as class 0 (:func:`correct_voxel_counts`);
- weights ``P_k = (max_k n_k + 1e-8) / (n_k + 1e-8)``, ``w_k = K log P_k / max_k log P_k`` (:func:`class_weights`),
  so the most frequent class (background) gets weight 0 and rare or badly predicted classes the largest ones;
- state ``W <- 0.99 W + 0.01 w`` (:class:`KTCPSClassWeights`), initialised with ``w`` of the labeled cases' voxel
  histogram;
- loss ``CE_{W_B}(logits1, argmax logits2) + CE_{W_A}(logits2, argmax logits1)`` on the whole batch, torch's weighted
  mean ``sum w ce / sum w`` (:func:`cross_pseudo_supervision`).

State: by default one EMA state per network: ``W_A`` follows network 1's counts, ``W_B``
network 2's. The official code keeps a single state that it updates twice per iteration, first from network 1
(giving ``W_A``) then from network 2 (giving ``W_B``); ``shared=True`` reproduces that exactly. In both modes
network 1 learns from network 2's pseudo-labels weighted by ``W_B`` and network 2 from network 1's by ``W_A``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nnunet_ext.ssl.ranks import RankSum, single_process

#: the official EMA momentum of the class weights
MOMENTUM = 0.99
#: the official guard in ``P_k``
EPSILON = 1e-8


def correct_voxel_counts(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(K,) counts of labeled voxels predicted correctly per class; mispredicted voxels are counted as class 0.

    ``logits`` (B, K, *S), ``labels`` (B, *S) integer.
    """
    num_classes = logits.shape[1]
    labels = labels.long()
    counted = torch.where(logits.argmax(1) == labels, labels, torch.zeros_like(labels))
    return torch.bincount(counted.flatten(), minlength=num_classes).to(torch.float32)


def class_weights(counts: torch.Tensor) -> torch.Tensor | None:
    """``w_k = K log P_k / max_k log P_k`` with ``P_k = (max n + 1e-8) / (n_k + 1e-8)`` for counts (K,).

    Returns None when every class has the same count: the official formula is 0/0 there (NaN weights that would
    poison the state); the caller keeps its previous weights (a fix of the official code).
    """
    counts = counts.to(torch.float64)
    log_ratio = torch.log((counts.max() + EPSILON) / (counts + EPSILON))
    largest = log_ratio.max()
    if largest <= 0:
        return None
    return (counts.numel() * log_ratio / largest).to(torch.float32)


class KTCPSClassWeights:
    """EMA class-weight state(s) of KT-CPS (see the module docstring); saved with ``state_dict``.

    ``weights``: (2, K) (one row per network) or (1, K) with ``shared=True`` (the official single state).
    """

    def __init__(self, num_classes: int, shared: bool = False, device: torch.device | str = "cpu"):
        self.shared = shared
        self.weights = torch.zeros(1 if shared else 2, num_classes, device=device)

    def initialise(self, histogram: torch.Tensor) -> None:
        """Every state set to ``class_weights(histogram)`` of the labeled cases' voxel counts per class (K,)."""
        weights = class_weights(histogram)
        if weights is None:
            raise ValueError(f"KT-CPS: the labeled cases' class histogram {histogram.tolist()} is uniform")
        self.weights[:] = weights.to(self.weights.device)

    @torch.no_grad()
    def update(self, counts1: torch.Tensor, counts2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One iteration's update from network 1's and network 2's correct-voxel counts (K,) each; returns
        ``(W_A, W_B)``, the weights network 2's and network 1's pseudo-supervision use."""
        if self.shared:
            self._step(0, counts1)
            weights_a = self.weights[0].clone()
            self._step(0, counts2)
            return weights_a, self.weights[0].clone()
        self._step(0, counts1)
        self._step(1, counts2)
        return self.weights[0].clone(), self.weights[1].clone()

    def _step(self, row: int, counts: torch.Tensor) -> None:
        weights = class_weights(counts)
        if weights is not None:
            self.weights[row] = MOMENTUM * self.weights[row] + (1 - MOMENTUM) * weights.to(self.weights.device)

    def state_dict(self) -> dict:
        return {"shared": self.shared, "weights": self.weights.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        if state["shared"] != self.shared or state["weights"].shape != self.weights.shape:
            raise ValueError(
                f"KT-CPS state of shape {tuple(state['weights'].shape)} (shared={state['shared']}) does not fit this "
                f"trainer's {tuple(self.weights.shape)} (shared={self.shared})"
            )
        self.weights.copy_(state["weights"].to(self.weights.device))


def weighted_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, sum_over_ranks: RankSum = single_process
) -> torch.Tensor:
    """torch's class-weighted CE mean ``sum_v w[t_v] ce_v / sum_v w[t_v]`` over the voxels of the batch (of every
    rank: both sums go through ``sum_over_ranks``); 0 (not NaN) when every target has weight 0 (e.g. an
    all-background pseudo-label map early in training: a fix, the official code returns NaN there)."""
    per_voxel = F.cross_entropy(logits.float(), targets, reduction="none")
    voxel_weights = weights[targets]
    weighted, total = sum_over_ranks(torch.stack([(voxel_weights * per_voxel).sum(), voxel_weights.sum()]))
    return weighted / total.clamp_min(EPSILON)


def cross_pseudo_supervision(
    logits1: torch.Tensor,
    logits2: torch.Tensor,
    weights_a: torch.Tensor,
    weights_b: torch.Tensor,
    sum_over_ranks: RankSum = single_process,
) -> torch.Tensor:
    """``CE_{W_B}(logits1, argmax logits2) + CE_{W_A}(logits2, argmax logits1)`` on whole batches (B, K, *S), the
    weighted means over every rank's batch (:func:`weighted_cross_entropy`); the pseudo-labels are detached."""
    pseudo1, pseudo2 = logits1.detach().argmax(1), logits2.detach().argmax(1)
    return weighted_cross_entropy(logits1, pseudo2, weights_b, sum_over_ranks) + weighted_cross_entropy(
        logits2, pseudo1, weights_a, sum_over_ranks
    )
