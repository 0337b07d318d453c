"""GuidedNet's loss composition (official ``train_guidedNet_flare.py``)::

    loss = sum_{n=1,2} [ sup_n + lambda (gmm_n + gmm_u_n + w(t) cons) ] + w(t) ktcps
    lambda = 0.3 ("lanmuda"), w(t) = 0.1 * sigmoid_rampup(iteration // 150, 200) ("consistency")

``cons`` (3D-CGMM response consistency) is added once per network, i.e. twice, as in the official code. The
supervised terms are computed by the caller (the trainer uses nnU-Net's Dice + CE with deep supervision).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nnunet_ext.ssl.cgmm import cgmm_terms, response_consistency
from nnunet_ext.ssl.ktcps import KTCPSClassWeights, correct_voxel_counts, cross_pseudo_supervision
from nnunet_ext.ssl.ramps import ramped_weight
from nnunet_ext.ssl.ranks import RankSum, single_process

#: the official ``--lanmuda``: weight of the 3D-CGMM terms
CGMM_WEIGHT = 0.3
#: the official ``--consistency``: final weight of KT-CPS and of the CGMM consistency (ramped)
CONSISTENCY_WEIGHT = 0.1
#: the official ``--consistency_rampup``, in steps of 150 iterations
CONSISTENCY_RAMPUP = 200
#: the published run the ramp belongs to (``--max_iterations 20000``)
PUBLISHED_ITERATIONS = 20_000


def guidednet_loss(
    logits: Sequence[torch.Tensor],
    features: Sequence[torch.Tensor],
    supervised: Sequence[torch.Tensor],
    labels: torch.Tensor,
    class_weights: KTCPSClassWeights,
    iteration: int,
    sum_over_ranks: RankSum = single_process,
) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """GuidedNet's training loss for one iteration and its terms; updates ``class_weights`` (KT-CPS EMA).

    Args:
        logits: the two networks' full-resolution logits on the whole batch (B, K, *S), labeled samples first.
        features: their last decoder feature maps (B, C, *S).
        supervised: their supervised losses on the labeled samples (scalars).
        labels: ground truth of the labeled samples (L, *S), integer classes; L = ``labels.shape[0]``.
        class_weights: the KT-CPS state (per network or shared).
        iteration: 0-based global training iteration (ramp-up position).
        sum_over_ranks: the sum over DDP ranks of the batch statistics (:mod:`nnunet_ext.ssl.ranks`): the
            correct-voxel counts (K,) of the class-weight update, so every rank keeps the same state, the KT-CPS
            weighted mean and the CGMM class vectors, so every rank's loss is the global batch's.
    """
    num_labeled = labels.shape[0]
    weight = ramped_weight(CONSISTENCY_WEIGHT, iteration, CONSISTENCY_RAMPUP)
    terms: dict[str, torch.Tensor | float] = {}
    loss = supervised[0] + supervised[1]
    responses, counts = [], []
    for index, (network_logits, network_features) in enumerate(zip(logits, features), start=1):
        probabilities = torch.softmax(network_logits.float(), 1)
        cgmm = cgmm_terms(probabilities, network_features, labels, num_labeled, sum_over_ranks)
        loss = loss + CGMM_WEIGHT * (cgmm.gmm + cgmm.gmm_unlabeled)
        responses.append(cgmm.masked_response)
        counts.append(sum_over_ranks(correct_voxel_counts(network_logits[:num_labeled].detach(), labels)))
        terms |= {
            f"supervised{index}": supervised[index - 1],
            f"gmm{index}": cgmm.gmm,
            f"gmm_u{index}": cgmm.gmm_unlabeled,
        }
    consistency = response_consistency(*responses)
    weights_a, weights_b = class_weights.update(*counts)
    ktcps = cross_pseudo_supervision(logits[0], logits[1], weights_a, weights_b, sum_over_ranks)
    loss = loss + 2 * CGMM_WEIGHT * weight * consistency + weight * ktcps
    terms |= {"cgmm_consistency": consistency, "ktcps": ktcps, "consistency_weight": weight}
    return loss, terms
