"""Batch and patch of a configuration sized for a trainer's own training memory.

nnU-Net's ``ExperimentPlanner`` sizes batch and patch with ``static_estimate_VRAM_usage`` of its own U-Net. Here
the plans' configuration is kept as planned and only what must change changes: the batch becomes the largest that
keeps the trainer's estimated training peak (:func:`~nnunet_ext.planning.memory.training_peak_bytes`) within the
memory target, never larger than the plans' own (what nnU-Net planned for its U-Net at that target: a network that
needs less memory keeps nnU-Net's batch, and with it nnU-Net's training dynamics); where batch 2 does not fit, the
patch shrinks the way nnU-Net's planner shrinks it (the axis largest relative to the median image shape, by the
divisibility step of nnU-Net's ``get_pool_and_conv_props``, the network topology recomputed) until it does.
nnU-Net's other limits stay: batch >= 2 and a batch covers <= 5% of the dataset's voxels.

The peak is modelled as ``fixed + batch * per_sample`` from estimates at batches 2 and 4 (a semi-supervised
trainer splits its batch into labeled and unlabeled samples, so it needs two); while the patch shrinks
``per_sample`` is scaled by the patch's voxels to pick the next candidate, and every chosen (patch, batch) is
estimated before it is accepted (where the model was optimistic, the largest fitting batch is searched between 2 and
the failed one).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

GIB = 2**30
#: nnU-Net's ``ExperimentPlanner``: smallest batch, largest share of the dataset's voxels in one batch, smallest
#: feature-map edge of its topology
MIN_BATCH_SIZE = 2
MAX_DATASET_COVERED = 0.05
FEATUREMAP_MIN_EDGE_LENGTH = 4

#: ``estimate(configuration_dict, batch_size) -> bytes``: the training peak of one configuration of the plans
PeakEstimator = Callable[[dict, int], int]


@dataclass(frozen=True)
class FittedConfiguration:
    """One configuration before and after fitting; ``configuration`` is the new plans entry. ``fits`` is False
    when even batch 2 at the smallest patch nnU-Net's topology allows exceeds the target (that patch is kept)."""

    name: str
    configuration: dict
    default_patch_size: tuple[int, ...]
    default_batch_size: int
    peak_bytes: int
    fits: bool
    estimates: int

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(self.configuration["patch_size"])

    @property
    def batch_size(self) -> int:
        return self.configuration["batch_size"]


def dataset_batch_cap(configuration: dict, num_training_cases: int, patch_size: tuple[int, ...]) -> int:
    """nnU-Net's cap: the batch whose patches hold 5% of the dataset's voxels (median image shape x cases)."""
    dataset_voxels = float(np.prod(configuration["median_image_size_in_voxels"], dtype=np.float64)) * num_training_cases
    return round(dataset_voxels * MAX_DATASET_COVERED / np.prod(patch_size, dtype=np.float64))


def with_patch_size(configuration: dict, patch_size: tuple[int, ...]) -> dict:
    """``configuration`` with ``patch_size`` and the default network topology nnU-Net's planner gives that patch:
    ``n_stages``, ``kernel_sizes``, ``strides`` from ``get_pool_and_conv_props``; per-stage lists (features, blocks)
    cut to the new number of stages, which is what the planner's own tables give."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    _, strides, kernel_sizes, patch, _ = get_pool_and_conv_props(
        configuration["spacing"], list(patch_size), FEATUREMAP_MIN_EDGE_LENGTH, 999999
    )
    fitted = copy.deepcopy(configuration)
    fitted["patch_size"] = [int(p) for p in patch]
    arch_kwargs = fitted["architecture"]["arch_kwargs"]
    num_stages = len(strides)
    for key in ("features_per_stage", "n_conv_per_stage", "n_blocks_per_stage"):
        if key in arch_kwargs:
            arch_kwargs[key] = list(arch_kwargs[key])[:num_stages]
    if "n_conv_per_stage_decoder" in arch_kwargs:
        arch_kwargs["n_conv_per_stage_decoder"] = list(arch_kwargs["n_conv_per_stage_decoder"])[: num_stages - 1]
    arch_kwargs.update(n_stages=num_stages, kernel_sizes=kernel_sizes, strides=strides)
    return fitted


def smaller_patch(configuration: dict, patch_size: tuple[int, ...]) -> tuple[int, ...] | None:
    """nnU-Net's next smaller patch: the axis largest relative to the median image shape loses one divisibility
    step (recomputed after a first step, as ``ExperimentPlanner.get_plans_for_configuration`` does); None when
    no smaller valid patch exists."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    spacing = configuration["spacing"]
    median = configuration["median_image_size_in_voxels"]
    _, _, _, _, divisible_by = get_pool_and_conv_props(spacing, list(patch_size), FEATUREMAP_MIN_EDGE_LENGTH, 999999)
    axis = int(np.argsort([p / m for p, m in zip(patch_size, median)])[-1])
    trial = list(patch_size)
    trial[axis] -= divisible_by[axis]
    if trial[axis] < FEATUREMAP_MIN_EDGE_LENGTH:
        return None
    _, _, _, _, divisible_by = get_pool_and_conv_props(spacing, trial, FEATUREMAP_MIN_EDGE_LENGTH, 999999)
    patch = list(patch_size)
    patch[axis] -= divisible_by[axis]
    if patch[axis] < FEATUREMAP_MIN_EDGE_LENGTH:
        return None
    _, _, _, patch, _ = get_pool_and_conv_props(spacing, patch, FEATUREMAP_MIN_EDGE_LENGTH, 999999)
    return tuple(int(p) for p in patch)


def fit_configuration(
    name: str, configuration: dict, estimate: PeakEstimator, target_bytes: float, num_training_cases: int
) -> FittedConfiguration:
    """Largest batch (then, where batch 2 does not fit, largest patch) whose estimated training peak fits
    ``target_bytes``. Everything but batch, patch and the default network's topology is kept."""
    calls = 0

    def peak(candidate: dict, batch_size: int) -> int:
        nonlocal calls
        calls += 1
        return estimate(candidate, batch_size)

    candidate = copy.deepcopy(configuration)
    two = peak(candidate, MIN_BATCH_SIZE)
    per_sample = max((peak(candidate, 2 * MIN_BATCH_SIZE) - two) / MIN_BATCH_SIZE, 1.0)
    fixed = two - MIN_BATCH_SIZE * per_sample
    fits = True
    while two > target_bytes:
        patch = _next_patch(candidate, fixed + MIN_BATCH_SIZE * per_sample, fixed, target_bytes)
        if patch is None:
            fits = False
            break
        candidate = with_patch_size(candidate, patch)
        two = peak(candidate, MIN_BATCH_SIZE)
        per_sample = max((two - fixed) / MIN_BATCH_SIZE, 1.0)
    batch, peak_bytes = MIN_BATCH_SIZE, two
    if fits:
        cap = dataset_batch_cap(candidate, num_training_cases, tuple(candidate["patch_size"]))
        largest = math.floor((target_bytes - fixed) / per_sample)
        batch = max(min(largest, cap, configuration["batch_size"]), MIN_BATCH_SIZE)
        peak_bytes = peak(candidate, batch) if batch != MIN_BATCH_SIZE else two
        if peak_bytes > target_bytes:
            batch, peak_bytes = _largest_fitting_batch(candidate, peak, two, batch, peak_bytes, target_bytes)
    candidate["batch_size"] = batch
    return FittedConfiguration(
        name, candidate, tuple(configuration["patch_size"]), configuration["batch_size"], peak_bytes, fits, calls
    )


def _largest_fitting_batch(
    configuration: dict, peak: PeakEstimator, peak_two: int, too_large: int, peak_too_large: int, target_bytes: float
) -> tuple[int, int]:
    """The largest batch in [2, ``too_large``) whose estimate fits, where the linear model was optimistic: a first
    guess on the line through the batch-2 and the failed estimate, then bisection. Returns it and its estimate."""
    fits, fits_peak, fails = MIN_BATCH_SIZE, peak_two, too_large
    per_sample = (peak_too_large - peak_two) / (too_large - MIN_BATCH_SIZE)
    middle = min(max(MIN_BATCH_SIZE + math.floor((target_bytes - peak_two) / per_sample), fits + 1), fails - 1)
    while fails - fits > 1:
        middle_peak = peak(configuration, middle)
        if middle_peak <= target_bytes:
            fits, fits_peak = middle, middle_peak
        else:
            fails = middle
        middle = (fits + fails) // 2
    return fits, fits_peak


def _next_patch(configuration: dict, peak_two: float, fixed: float, target_bytes: float) -> tuple[int, ...] | None:
    """The first of nnU-Net's successively smaller patches whose batch-2 peak, with the per-sample bytes scaled
    by the patch's voxels, fits ``target_bytes`` (or the smallest one); None when the patch cannot shrink."""
    patch = tuple(configuration["patch_size"])
    per_voxel = (peak_two - fixed) / math.prod(patch)
    smaller = smaller_patch(configuration, patch)
    while smaller is not None:
        patch, smaller = smaller, smaller_patch(configuration, smaller)
        if fixed + per_voxel * math.prod(patch) <= target_bytes:
            break
    return None if patch == tuple(configuration["patch_size"]) else patch
