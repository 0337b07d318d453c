"""Metrics of one class in one case, on a pair of binary masks: Dice, IoU, HD95, ASSD and NSD.

Masks are boolean arrays of shape (X, Y) or (X, Y, Z), reference and prediction on the same grid; ``spacing``
gives the voxel size per axis (mm, or 1 for voxel units). The surface metrics need both masks non-empty: what a
metric is worth when a mask is empty is the protocol's choice (``protocols.py``), not a property of the metric.

Surface distances come from MONAI (``monai.metrics.utils.get_edge_surface_distance``): the edge of a mask is the
mask minus its binary erosion with the face-connected structuring element (the definition of medpy and of MONAI's
``HausdorffDistanceMetric``), and each edge voxel gets its exact Euclidean distance, scaled by the spacing, to the
nearest edge voxel of the other mask. NSD uses MONAI's sub-voxel surface elements (``use_subvoxels=True``), the
surfel-area-weighted definition of Nikolov et al. 2021 (DeepMind's ``surface-distance``, used by MSD and FLARE).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MetricInfo:
    """How a metric is named in reports and which way is better."""

    column: str
    higher_is_better: bool
    is_distance: bool


METRICS: dict[str, MetricInfo] = {
    "dice": MetricInfo("Dice", higher_is_better=True, is_distance=False),
    "iou": MetricInfo("IoU", higher_is_better=True, is_distance=False),
    "hd95": MetricInfo("HD95", higher_is_better=False, is_distance=True),
    "assd": MetricInfo("ASSD", higher_is_better=False, is_distance=True),
    "nsd": MetricInfo("NSD", higher_is_better=True, is_distance=False),
}


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Dice similarity coefficient ``2 |R & P| / (|R| + |P|)``; NaN when both masks are empty."""
    intersection = np.count_nonzero(reference & prediction)
    total = np.count_nonzero(reference) + np.count_nonzero(prediction)
    return 2.0 * intersection / total if total else float("nan")


def iou(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Intersection over union (Jaccard index) ``|R & P| / |R | P|``; NaN when both masks are empty."""
    union = np.count_nonzero(reference | prediction)
    return np.count_nonzero(reference & prediction) / union if union else float("nan")


def surface_distances(
    reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances of the prediction's edge voxels to the reference edge, and of the reference's edge voxels to the
    prediction edge (1-D float64 arrays, in the unit of ``spacing``). Both masks must be non-empty."""
    from monai.metrics.utils import get_edge_surface_distance  # imported here: 5 s, needed for surface metrics only

    with warnings.catch_warnings():
        # MONAI 1.5+ warns about its own internal use of a deprecated argument of get_mask_edges.
        warnings.simplefilter("ignore", FutureWarning)
        _, (pred_to_ref, ref_to_pred), _ = get_edge_surface_distance(
            _as_tensor(prediction), _as_tensor(reference), spacing=tuple(spacing), symmetric=True
        )
    return _as_float64(pred_to_ref), _as_float64(ref_to_pred)


def hausdorff_distance_95(pred_to_ref: np.ndarray, ref_to_pred: np.ndarray, pooled: bool = False) -> float:
    """95th percentile Hausdorff distance (linear interpolation between order statistics, as numpy and torch).

    ``pooled=False``: the larger of the two directed 95th percentiles (MONAI's ``compute_hausdorff_distance``,
    DeepMind's ``compute_robust_hausdorff``). ``pooled=True``: the 95th percentile of both directions' distances
    together (medpy's ``hd95``, and so the TransUNet family of papers).
    """
    if pooled:
        return float(np.percentile(np.concatenate([pred_to_ref, ref_to_pred]), 95))
    return float(max(np.percentile(pred_to_ref, 95), np.percentile(ref_to_pred, 95)))


def average_symmetric_surface_distance(pred_to_ref: np.ndarray, ref_to_pred: np.ndarray) -> float:
    """Mean over the edge voxels of both masks of their distance to the other edge (Heimann et al. 2009; MONAI's
    ``SurfaceDistanceMetric(symmetric=True)`` and medpy >= 0.5 ``assd``)."""
    return float(np.concatenate([pred_to_ref, ref_to_pred]).mean())


def normalized_surface_dice(
    reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float], tolerance: float
) -> float:
    """Normalised surface Dice at ``tolerance`` (Nikolov et al. 2021, "surface DSC"): the area of both surfaces lying
    within ``tolerance`` of the other surface over the total area of both. Both masks must be non-empty."""
    from monai.metrics.utils import get_edge_surface_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        (edges_pred, edges_ref), (pred_to_ref, ref_to_pred), (areas_pred, areas_ref) = get_edge_surface_distance(
            _as_tensor(prediction), _as_tensor(reference), spacing=tuple(spacing), use_subvoxels=True, symmetric=True
        )
    areas_pred, areas_ref = _as_float64(areas_pred[edges_pred]), _as_float64(areas_ref[edges_ref])
    within_pred = areas_pred[_as_float64(pred_to_ref) <= tolerance].sum()
    within_ref = areas_ref[_as_float64(ref_to_pred) <= tolerance].sum()
    return float((within_pred + within_ref) / (areas_pred.sum() + areas_ref.sum()))


def largest_distance(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The diagonal of the image: no two voxels are further apart. Used as the distance to a missing mask."""
    return float(np.linalg.norm(np.asarray(shape, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)))


def _as_tensor(mask: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))


def _as_float64(values) -> np.ndarray:
    return np.asarray(values.cpu().numpy() if hasattr(values, "cpu") else values, dtype=np.float64)
