"""Evaluation protocols: the unit of distances, the HD95 convention, the NSD tolerances and, above all, what each
metric is worth when a class is missing from the reference, the prediction or both.

Published numbers differ in these rules more than in the metric formulas, so each protocol states them as a table
(``EmptyMaskPolicy``) and ``Protocol.score`` applies them before any metric is computed:

============================  ==============  =====================  ======================
situation                     nnunet          transunet-synapse      flare
============================  ==============  =====================  ======================
both empty                    all NaN         all 0                  Dice, IoU, NSD 1; dist. 0
only the prediction has it    0 / worst       Dice, IoU, NSD 1; 0    0 / worst
only the reference has it     0 / worst       all 0                  0 / worst
============================  ==============  =====================  ======================

("0 / worst": Dice, IoU and NSD 0, HD95 and ASSD the image diagonal.) NaN values are left out of the means over
cases, as nnU-Net does for Dice. Where a protocol's source reports only some metrics, the others follow the rules of
the reported metric of their kind: IoU and NSD those of Dice, ASSD those of HD95.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from nnunet_ext.evaluation.metrics import (
    METRICS,
    average_symmetric_surface_distance,
    dice,
    hausdorff_distance_95,
    iou,
    largest_distance,
    normalized_surface_dice,
    surface_distances,
)

WORST = "worst"
"""Policy value: the largest distance in the image (its diagonal), for a distance to a mask that is not there."""

NAN = float("nan")
LabelOrRegion = int | tuple[int, ...]


def _values(similarity: float, distance: float | str) -> dict[str, float | str]:
    """A policy row: one value for Dice, IoU and NSD, another for HD95 and ASSD."""
    return {name: distance if info.is_distance else similarity for name, info in METRICS.items()}


@dataclass(frozen=True)
class EmptyMaskPolicy:
    """Metric values (per metric name; a number, NaN or ``WORST``) when a class is absent from a mask."""

    both_empty: Mapping[str, float | str]
    only_prediction: Mapping[str, float | str]
    only_reference: Mapping[str, float | str]

    def describe(self, metrics: Sequence[str]) -> str:
        """One line per situation, e.g. ``both empty: Dice=NaN, HD95=NaN``."""
        rows = {
            "both empty": self.both_empty,
            "only the prediction has the class": self.only_prediction,
            "only the reference has the class": self.only_reference,
        }
        return "\n".join(
            f"{situation}: " + ", ".join(f"{METRICS[m].column}={_format_policy_value(row[m])}" for m in metrics)
            for situation, row in rows.items()
        )


@dataclass(frozen=True)
class Protocol:
    """How one family of papers evaluates a segmentation (see the module docstring for the empty-mask table)."""

    name: str
    summary: str
    default_metrics: tuple[str, ...]
    physical_units: bool
    """Distances and NSD tolerances in mm from the image spacing; False: in voxels (spacing ignored)."""
    pooled_hd95: bool
    """HD95 as the percentile of both directions' distances together (medpy) instead of the larger directed one."""
    empty_masks: EmptyMaskPolicy
    default_tolerance: float | None = 1.0
    label_tolerances: Mapping[int, float] = field(default_factory=dict)
    reference_extent_labels: tuple[int, ...] = ()
    """Labels scored only on the slices (first axis) that the reference covers, as FLARE does for tubular organs."""

    @property
    def unit(self) -> str:
        return "mm" if self.physical_units else "voxels"

    def tolerance(self, label: LabelOrRegion) -> float | None:
        """The protocol's NSD tolerance for a label or region (None: the protocol has none, the user must give one)."""
        return (
            self.label_tolerances.get(label, self.default_tolerance)
            if isinstance(label, int)
            else self.default_tolerance
        )

    def score(
        self,
        reference: np.ndarray,
        prediction: np.ndarray,
        spacing: Sequence[float],
        metrics: Sequence[str],
        tolerance: float | None = None,
        label: LabelOrRegion | None = None,
    ) -> dict[str, float]:
        """Metrics of one class: boolean masks of shape (X, Y[, Z]), ``spacing`` per axis in mm."""
        spacing = tuple(spacing) if self.physical_units else (1.0,) * reference.ndim
        worst = largest_distance(reference.shape, spacing)
        row = self._empty_mask_row(reference.any(), prediction.any())
        if row is None and label in self.reference_extent_labels and reference.ndim == 3:
            reference, prediction = _crop_to_reference_slices(reference, prediction)
            if not reference.any():
                # The reference lies on one slice, which the exclusive upper bound of FLARE's script crops away;
                # the script then divides 0 by 0.
                return dict.fromkeys(metrics, NAN)
            row = self._empty_mask_row(True, prediction.any())
        if row is not None:
            return {m: worst if row[m] == WORST else float(row[m]) for m in metrics}
        return _score_present(reference, prediction, spacing, metrics, tolerance, self.pooled_hd95)

    def _empty_mask_row(self, reference_present: bool, prediction_present: bool) -> Mapping[str, float | str] | None:
        if reference_present and prediction_present:
            return None
        if reference_present:
            return self.empty_masks.only_reference
        return self.empty_masks.only_prediction if prediction_present else self.empty_masks.both_empty


def _score_present(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing: tuple[float, ...],
    metrics: Sequence[str],
    tolerance: float | None,
    pooled_hd95: bool,
) -> dict[str, float]:
    values: dict[str, float] = {}
    if "dice" in metrics:
        values["dice"] = dice(reference, prediction)
    if "iou" in metrics:
        values["iou"] = iou(reference, prediction)
    if "hd95" in metrics or "assd" in metrics:
        pred_to_ref, ref_to_pred = surface_distances(reference, prediction, spacing)
        if "hd95" in metrics:
            values["hd95"] = hausdorff_distance_95(pred_to_ref, ref_to_pred, pooled=pooled_hd95)
        if "assd" in metrics:
            values["assd"] = average_symmetric_surface_distance(pred_to_ref, ref_to_pred)
    if "nsd" in metrics:
        if tolerance is None:
            raise ValueError("NSD needs a tolerance")
        values["nsd"] = normalized_surface_dice(reference, prediction, spacing, tolerance)
    return {m: values[m] for m in metrics}


def _crop_to_reference_slices(reference: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks restricted to the slices ``[first, last)`` of the reference along the first (z) axis.

    FLARE22's evaluation script crops ``[z_lower:z_upper]`` with ``z_upper`` the last labelled slice, so that slice
    is left out; reproduced as is, since the point of the protocol is numbers comparable to the challenge's.
    """
    slices = np.flatnonzero(reference.any(axis=tuple(range(1, reference.ndim))))
    first, last = slices[0], slices[-1]
    return reference[first:last], prediction[first:last]


def _format_policy_value(value: float | str) -> str:
    if value == WORST:
        return "image diagonal"
    return "NaN" if np.isnan(value) else f"{value:g}"


FLARE22_NSD_TOLERANCES_MM: dict[int, float] = {
    1: 5.0,  # liver
    2: 3.0,  # right kidney
    3: 3.0,  # spleen
    4: 5.0,  # pancreas
    5: 2.0,  # aorta
    6: 2.0,  # inferior vena cava
    7: 2.0,  # right adrenal gland
    8: 2.0,  # left adrenal gland
    9: 2.0,  # gallbladder
    10: 3.0,  # esophagus
    11: 5.0,  # stomach
    12: 7.0,  # duodenum
    13: 3.0,  # left kidney
}
"""FLARE22 organ tolerances (JunMa11/FLARE, FLARE22/Evaluation/FLARE22_DSC_NSD_Eval.py), by FLARE22 label."""

PROTOCOLS: dict[str, Protocol] = {
    protocol.name: protocol
    for protocol in (
        Protocol(
            name="nnunet",
            summary="nnU-Net's rules (Dice NaN when a class is in neither mask), extended to surface metrics: "
            "distances in mm, HD95 the larger directed 95th percentile (MONAI), a missing mask scores 0 or the image "
            "diagonal.",
            default_metrics=("dice", "iou", "hd95", "assd", "nsd"),
            physical_units=True,
            pooled_hd95=False,
            empty_masks=EmptyMaskPolicy(
                both_empty=_values(NAN, NAN), only_prediction=_values(0.0, WORST), only_reference=_values(0.0, WORST)
            ),
        ),
        Protocol(
            name="transunet-synapse",
            summary="TransUNet's test protocol (Beckschen/TransUNet utils.calculate_metric_percase): medpy Dice and "
            "HD95 without voxel spacing (voxel units, pooled percentile); a class only in the prediction scores "
            "(Dice 1, HD95 0), an empty prediction (0, 0); means over all cases.",
            default_metrics=("dice", "hd95"),
            physical_units=False,
            pooled_hd95=True,
            empty_masks=EmptyMaskPolicy(
                both_empty=_values(0.0, 0.0), only_prediction=_values(1.0, 0.0), only_reference=_values(0.0, 0.0)
            ),
        ),
        Protocol(
            name="flare",
            summary="FLARE22's evaluation (JunMa11/FLARE FLARE22_DSC_NSD_Eval.py): DSC and NSD at per-organ "
            "tolerances in mm, a class in neither mask scores 1, aorta, IVC and esophagus (labels 5, 6, 10) are "
            "scored on the reference's slices only. Assumes FLARE22 label numbers.",
            default_metrics=("dice", "nsd"),
            physical_units=True,
            pooled_hd95=False,
            empty_masks=EmptyMaskPolicy(
                both_empty=_values(1.0, 0.0), only_prediction=_values(0.0, WORST), only_reference=_values(0.0, WORST)
            ),
            default_tolerance=None,
            label_tolerances=FLARE22_NSD_TOLERANCES_MM,
            reference_extent_labels=(5, 6, 10),
        ),
    )
}
