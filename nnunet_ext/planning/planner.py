"""``nnUNetv2_plan_experiment -pl ExtPlanner_<trainer>``: nnU-Net's planner, its plans fitted to a trainer.

``ExtPlanner_nnUNetTrainerGCGLE`` plans exactly as nnU-Net's ``ExperimentPlanner`` (same fingerprint, spacing,
normalisation, default patch and network) and, before saving, fits batch and patch of every configuration the trainer
can build to the trainer's estimated training peak within ``-gpu_memory_target`` (:mod:`nnunet_ext.planning.fit`).
Without ``-overwrite_plans_name`` the plans are named ``nnUNetPlans_<trainer>_<target>G``, never ``nnUNetPlans``.
Configurations that preprocess like those of an existing ``nnUNetPlans.json`` reuse its preprocessed data.
"""

from __future__ import annotations

import functools
from pathlib import Path

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.json_export import recursive_fix_for_json_export

from nnunet_ext.planning.plans import (
    DEFAULT_GPU_MEMORY_TARGET_GB,
    default_plans_name,
    fit_plans,
    fitted_table,
    load_json,
    own_configurations,
    reuse_preprocessed_data,
    trainer_builds,
)
from nnunet_ext.registration import PLANNER_PREFIX

NNUNET_PLANS = "nnUNetPlans"


class TrainerFittedPlanner(ExperimentPlanner):
    """nnU-Net's default planner whose saved plans are fitted to :attr:`trainer_name`'s training memory."""

    trainer_name: str = ""

    def __init__(
        self,
        dataset_name_or_id: str | int,
        gpu_memory_target_in_gb: float = DEFAULT_GPU_MEMORY_TARGET_GB,
        preprocessor_name: str = "DefaultPreprocessor",
        plans_name: str = NNUNET_PLANS,
        overwrite_target_spacing: list[float] | tuple[float, ...] | None = None,
        suppress_transpose: bool = False,
    ):
        if plans_name == NNUNET_PLANS:
            plans_name = default_plans_name(self.trainer_name, gpu_memory_target_in_gb)
        super().__init__(
            dataset_name_or_id,
            gpu_memory_target_in_gb,
            preprocessor_name,
            plans_name,
            overwrite_target_spacing,
            suppress_transpose,
        )

    def save_plans(self, plans: dict) -> None:
        recursive_fix_for_json_export(plans)  # numpy values to JSON types, as nnU-Net saves them, before comparing
        trainer_class = recursive_find_trainer_class_by_name(self.trainer_name)
        configurations = [
            name for name in own_configurations(plans) if trainer_builds(trainer_class, plans, name, self.dataset_json)
        ]
        fitted, results = fit_plans(
            plans, self.dataset_json, trainer_class, configurations, self.UNet_vram_target_GB, self.plans_identifier
        )
        default_plans = Path(nnUNet_preprocessed) / self.dataset_name / f"{NNUNET_PLANS}.json"
        if default_plans.is_file():
            reused = reuse_preprocessed_data(fitted, load_json(default_plans))
            print(f"configurations using the preprocessed data of {NNUNET_PLANS}: {', '.join(reused) or 'none'}")
        print(fitted_table(results, f"{NNUNET_PLANS} (planned)", self.plans_identifier))
        super().save_plans(fitted)


@functools.cache
def planner_for_trainer(trainer_name: str) -> type[TrainerFittedPlanner]:
    """The planner class ``ExtPlanner_<trainer_name>`` (one class per trainer name)."""
    return type(f"{PLANNER_PREFIX}{trainer_name}", (TrainerFittedPlanner,), {"trainer_name": trainer_name})
