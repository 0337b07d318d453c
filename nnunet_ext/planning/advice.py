"""The line a trainer prints at the start of GPU training when its plans would not fit the GPU."""

from __future__ import annotations

import math

from nnunet_ext.planning.fit import GIB
from nnunet_ext.planning.memory import training_peak_bytes
from nnunet_ext.planning.plans import default_plans_name


def per_gpu_batch_size(global_batch_size: int, world_size: int) -> int:
    """The largest per-GPU share of nnU-Net's DDP split of the plans' batch (one sample more on the first ranks)."""
    return math.ceil(global_batch_size / world_size)


def memory_advice(trainer, total_memory_bytes: int, world_size: int = 1) -> str | None:
    """One line naming the ``nnUNetv2_ext_plan`` command that fixes the plans when ``trainer``'s estimated training
    peak (:func:`~nnunet_ext.planning.memory.training_peak_bytes`, its per-GPU batch of the plans in use) exceeds
    ``total_memory_bytes``; None when it fits."""
    batch_size = per_gpu_batch_size(trainer.configuration_manager.batch_size, world_size)
    peak = training_peak_bytes(
        type(trainer), trainer.plans_manager.plans, trainer.configuration_name, trainer.dataset_json, batch_size
    )
    if peak <= total_memory_bytes:
        return None
    trainer_name = type(trainer).__name__
    target = max(math.floor(total_memory_bytes / GIB), 1)
    return (
        f"Estimated training peak {peak / GIB:.1f} GB (batch {batch_size} per GPU, patch "
        f"{list(trainer.configuration_manager.patch_size)}) exceeds this GPU's {total_memory_bytes / GIB:.1f} GB: "
        f"nnUNetv2_ext_plan -d {trainer.plans_manager.dataset_name} -tr {trainer_name} "
        f"-c {trainer.configuration_name} -gpu_memory_target {target} fits the plans; then train with "
        f"-p {default_plans_name(trainer_name, target)}. Training goes on (the estimate may be wrong)."
    )
