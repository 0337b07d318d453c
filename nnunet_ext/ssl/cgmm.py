"""3D-CGMM of GuidedNet (Zhao et al., ACM MM 2024, arXiv 2408.04914), as published in the official code.

The official ``utils/tools.py`` (kimjisoo12/GuidedNet@3def342) models each class of a
labeled patch by its prototype, the mean decoder feature over the class's voxels, and scores every voxel with an
isotropic unit-width kernel of the mean absolute feature distance to it. The paper's formulas were not available;
everything below follows the code. Notation (shapes): ``B`` patches, ``C`` feature channels, ``K`` classes, ``*S`` the
spatial patch (2D or 3D), ``V = prod(S)`` voxels.

- presence ``m[i, k] = 1[class k occurs in labeled patch i]``;
- prototype ``mu[i, k] = sum_v 1[y_v = k] f_v / (N_ik + 1e-6)`` (zero if k is absent);
- distance ``d[i, k](v) = (1/C) sum_c |f_c(v) - mu[i, k, c]|``, response ``g = exp(-d^2)``;
- labeled loss ``L1 + L2 + proto`` (:func:`labeled_gmm_loss`), unlabeled loss (:func:`unlabeled_gmm_loss`),
  consistency of the two networks' responses (:func:`response_consistency`).

Memory (issue item 2): prototypes are a ``scatter_add`` over voxels (``B x C x K`` result, no ``K x V`` one-hot);
distances use ``torch.cdist(p=1)`` forward and a backward looping over the K classes (:class:`_MeanAbsoluteDistance`),
so no ``B x K x C x V`` difference tensor is ever built: the largest temporaries are the ``B x K x V`` response maps
the losses are defined on and ``B x C x V`` feature-sized maps.

Deviations from the official code, each noted where it happens: unlabeled patches are paired with labeled patch
``j mod L`` (the official batch always has as many of each); the unlabeled loss is computed in float32 (the
official code runs it in float16); everything is written for 2D and 3D patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nnunet_ext.ssl.ranks import RankSum, single_process

#: the official code's guard in prototype means and presence-weighted averages
EPSILON = 1e-6


def class_presence(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``m``: (B, K) float, 1 where class k occurs in patch i. ``labels``: (B, *S) integer."""
    counts = _class_counts(labels, num_classes)
    return (counts > 0).to(torch.float32)


def _class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K) voxel counts per patch and class (one ``bincount`` over offset labels)."""
    batch = labels.shape[0]
    offsets = torch.arange(batch, device=labels.device).view(-1, *([1] * (labels.dim() - 1))) * num_classes
    counts = torch.bincount((labels.long() + offsets).flatten(), minlength=batch * num_classes)
    return counts.view(batch, num_classes).to(torch.float32)


def prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-patch class prototypes ``mu``: (B, K, C) = mean of ``features`` (B, C, *S) over the voxels of each class
    of ``labels`` (B, *S); a zero vector for an absent class (official ``GMM``: ``sum / (count + 1e-6)``)."""
    batch, channels = features.shape[:2]
    flat = features.reshape(batch, channels, -1).float()
    index = labels.reshape(batch, 1, -1).long().expand(-1, channels, -1)
    sums = flat.new_zeros(batch, channels, num_classes).scatter_add_(2, index, flat)
    counts = _class_counts(labels, num_classes)
    return sums.transpose(1, 2) / (counts.unsqueeze(-1) + EPSILON)


class _MeanAbsoluteDistance(torch.autograd.Function):
    """``d[b, v, k] = (1/C) sum_c |x[b, v, c] - y[b, k, c]|`` for x (B, V, C), y (B, K, C), with a memory-lean
    backward.

    ``torch.cdist(p=1)`` computes the forward without a ``B x V x K x C`` temporary, but its CUDA backward allocates
    exactly that buffer (once per input), which is gigabytes for a 3D patch. The backward here loops over the K
    classes (not voxels), each pass holding one ``B x V x C`` sign map:
    ``dx = (1/C) sum_k g[..., k] sign(x - y_k)``, ``dy_k = -(1/C) sum_v g[..., k] sign(x - y_k)``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, y)
        return torch.cdist(x, y, p=1) / x.shape[-1]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, y = ctx.saved_tensors
        grad = grad / x.shape[-1]
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        grad_y = torch.zeros_like(y) if ctx.needs_input_grad[1] else None
        for k in range(y.shape[1]):
            weighted_sign = torch.sign(x - y[:, k : k + 1]) * grad[:, :, k : k + 1]
            if grad_x is not None:
                grad_x += weighted_sign
            if grad_y is not None:
                grad_y[:, k] = -weighted_sign.sum(1)
        return grad_x, grad_y


def response(features: torch.Tensor, class_prototypes: torch.Tensor) -> torch.Tensor:
    """GMM response ``g = exp(-d^2)``: (B, K, *S) for ``features`` (B, C, *S) and prototypes (B, K, C), with ``d``
    the mean absolute feature distance (official ``GMM``/``GMM_predict``, no presence mask here)."""
    batch, channels, *spatial = features.shape
    flat = features.reshape(batch, channels, -1).transpose(1, 2).float().contiguous()
    distance = _MeanAbsoluteDistance.apply(flat, class_prototypes.float().contiguous())  # (B, V, K)
    return torch.exp(-distance.square()).transpose(1, 2).reshape(batch, -1, *spatial)


def _masked_bce(prediction: torch.Tensor, target: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """``mean_v [sum_k m_k * BCE(a_k, b_k) / 2 / (sum_k m_k + 1e-6)]`` over patches and voxels, with the official
    ``BCE(a, b) = -b log(a + 1e-6) - (1 - b) log(1 - a + 1e-6)``; ``prediction``/``target`` (B, K, *S), ``presence``
    (B, K)."""
    bce = -target * torch.log(prediction + EPSILON) - (1 - target) * torch.log(1 - prediction + EPSILON)
    spatial_dims = prediction.dim() - 2
    per_voxel = (_spatial(presence, spatial_dims) * bce / 2).sum(1) / (
        _spatial(presence.sum(1), spatial_dims) + EPSILON
    )
    return per_voxel.mean()


def _spatial(values: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """``values`` (B, ...) with ``spatial_dims`` trailing singleton axes, to broadcast over a patch."""
    return values.view(*values.shape, *([1] * spatial_dims))


def prototype_separation_loss(
    class_prototypes: torch.Tensor, presence: torch.Tensor, sum_over_ranks: RankSum = single_process
) -> torch.Tensor:
    """``proto``: mean over the pairs k < l of classes present in the batch of ``exp(-(mean_c |v_k - v_l|)^2)``.

    ``v_k = (sum_i mu_ik) n_k / (n_k + 1e-6)`` with ``n_k`` the number of patches holding class k (the official
    ``mean_vecs``, in effect a sum over patches; over every rank's patches, through ``sum_over_ranks``). Prototypes
    (B, K, C), presence (B, K); 0 with fewer than two present classes. Close class prototypes give a loss near 1.

    The pairs are a (K, K) mask rather than a list of present classes: no value leaves the device (no
    synchronisation, no graph break under ``torch.compile``) and fake tensors can trace it.
    """
    patches_with_class = sum_over_ranks(presence.sum(0))
    prototype_sums = sum_over_ranks(class_prototypes.sum(0))
    vectors = prototype_sums * (patches_with_class / (patches_with_class + EPSILON)).unsqueeze(-1)
    present = patches_with_class > 0
    pairs = torch.triu(present.unsqueeze(0) & present.unsqueeze(1), diagonal=1).to(vectors.dtype)
    distance = (vectors.unsqueeze(1) - vectors.unsqueeze(0)).abs().mean(-1)
    return (torch.exp(-distance.square()) * pairs).sum() / pairs.sum().clamp(min=1)


def labeled_gmm_loss(
    probabilities: torch.Tensor, masked_response: torch.Tensor, labels: torch.Tensor, presence: torch.Tensor
) -> torch.Tensor:
    """Official ``cal_gmm_loss`` without ``proto``: ``L1 + L2`` on a labeled half.

    - ``L1``: the softmax prediction (B, K, *S) fits the response (soft target, not detached, as in the code);
    - ``L2``: the presence-masked response ``g * m`` (B, K, *S) fits the one-hot ground truth ``labels`` (B, *S);
    both presence-weighted per voxel.
    """
    one_hot = torch.zeros_like(probabilities).scatter_(1, labels.long().unsqueeze(1), 1.0)
    return _masked_bce(probabilities, masked_response, presence) + _masked_bce(masked_response, one_hot, presence)


def unlabeled_gmm_loss(
    probabilities: torch.Tensor, unlabeled_response: torch.Tensor, presence: torch.Tensor
) -> torch.Tensor:
    """Official ``gmm_loss`` on an unlabeled half: the prediction (U, K, *S) is pulled towards the response to the
    prototypes of its paired labeled patch (U, K, *S), classes weighted by presence (U, K) in that patch.

    Deviation: float32; the official code computes this term in float16.
    """
    return _masked_bce(probabilities.float(), unlabeled_response.float(), presence)


def paired_labeled_index(num_unlabeled: int, num_labeled: int, device: torch.device) -> torch.Tensor:
    """Labeled patch paired with each unlabeled one: ``j mod L``.

    The official batch has as many unlabeled as labeled patches (4 + 4) and pairs j with j; nnU-Net batch
    compositions may differ by one (odd batch sizes), so the pairing wraps around.
    """
    return torch.arange(num_unlabeled, device=device) % num_labeled


def response_consistency(masked_response1: torch.Tensor, masked_response2: torch.Tensor) -> torch.Tensor:
    """Official "consistent" CGMM term before its ramp weight: ``mean((softmax_k(g1) - softmax_k(g2))^2)`` between the
    two networks' presence-masked labeled responses (B, K, *S)."""
    return (torch.softmax(masked_response1, 1) - torch.softmax(masked_response2, 1)).square().mean()


@dataclass
class CGMMTerms:
    """One network's 3D-CGMM terms on a batch: ``gmm`` (``L1 + L2 + proto``, labeled half), ``gmm_unlabeled``,
    ``masked_response`` ``g * m`` (L, K, *S) for :func:`response_consistency`, ``prototypes`` (L, K, C)."""

    gmm: torch.Tensor
    gmm_unlabeled: torch.Tensor
    masked_response: torch.Tensor
    prototypes: torch.Tensor


def cgmm_terms(
    probabilities: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    num_labeled: int,
    sum_over_ranks: RankSum = single_process,
) -> CGMMTerms:
    """3D-CGMM of one network on a whole batch, labeled samples first.

    Args:
        probabilities: softmax prediction (B, K, *S).
        features: last decoder feature map (B, C, *S), same spatial size as the prediction.
        labels: ground truth of the first ``num_labeled`` samples (L, *S), integer classes.
        num_labeled: L; the remaining B - L samples are unlabeled.
        sum_over_ranks: for the class vectors of :func:`prototype_separation_loss`, which sum over the batch's
            patches; every other term is a mean over patches.
    """
    if features.shape[2:] != probabilities.shape[2:]:
        raise ValueError(
            f"3D-CGMM needs the decoder feature at the prediction's resolution: features {tuple(features.shape)}, "
            f"prediction {tuple(probabilities.shape)}"
        )
    num_classes = probabilities.shape[1]
    probabilities = probabilities.float()
    presence = class_presence(labels, num_classes)
    class_prototypes = prototypes(features[:num_labeled], labels, num_classes)
    masked = response(features[:num_labeled], class_prototypes) * _spatial(presence, labels.dim() - 1)
    gmm = labeled_gmm_loss(probabilities[:num_labeled], masked, labels, presence)
    gmm = gmm + prototype_separation_loss(class_prototypes, presence, sum_over_ranks)
    pairing = paired_labeled_index(features.shape[0] - num_labeled, num_labeled, features.device)
    unlabeled_response = response(features[num_labeled:], class_prototypes[pairing])
    gmm_unlabeled = unlabeled_gmm_loss(probabilities[num_labeled:], unlabeled_response, presence[pairing])
    return CGMMTerms(gmm, gmm_unlabeled, masked, class_prototypes)
