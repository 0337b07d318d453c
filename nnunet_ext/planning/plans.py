"""Plans for a trainer: every configuration of a plans dict fitted to the trainer's training memory
(:mod:`nnunet_ext.planning.fit`), with their own plans identifier, reusing the preprocessed data."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from tqdm import tqdm

from nnunet_ext.benchmark.trainer_step import initialised_trainer
from nnunet_ext.data.atomic import write_json_atomically
from nnunet_ext.planning.fit import GIB, FittedConfiguration, fit_configuration
from nnunet_ext.planning.memory import benchmark_setting, training_peak_bytes

#: nnU-Net's default memory target (``ExperimentPlanner``, ``-gpu_memory_target``), GB
DEFAULT_GPU_MEMORY_TARGET_GB = 8.0
#: configuration keys that decide the preprocessed data: plans that agree on them share ``data_identifier``
PREPROCESSING_KEYS = (
    "spacing",
    "normalization_schemes",
    "use_mask_for_norm",
    "preprocessor_name",
    "resampling_fn_data",
    "resampling_fn_data_kwargs",
    "resampling_fn_seg",
    "resampling_fn_seg_kwargs",
)


def default_plans_name(trainer_name: str, gpu_memory_target_gb: float) -> str:
    """``nnUNetPlans_<trainer without its nnUNetTrainer prefix>_<target>G``, e.g. ``nnUNetPlans_GCGLE_8G``."""
    short = trainer_name.removeprefix("nnUNetTrainer").strip("_") or trainer_name
    return f"nnUNetPlans_{short}_{gpu_memory_target_gb:g}G"


def own_configurations(plans: dict) -> list[str]:
    """Configurations with their own patch (not ``inherits_from`` another one, e.g. 3d_cascade_fullres)."""
    return [name for name, c in plans["configurations"].items() if "inherits_from" not in c and "patch_size" in c]


def fit_plans(
    plans: dict,
    dataset_json: dict,
    trainer_class: type,
    configurations: Iterable[str],
    gpu_memory_target_gb: float,
    plans_name: str,
    on_estimate: Callable[[str], None] | None = None,
) -> tuple[dict, list[FittedConfiguration]]:
    """A copy of ``plans`` named ``plans_name`` whose ``configurations`` are fitted to ``trainer_class``'s
    estimated training peak within ``gpu_memory_target_gb``; the others are copied unchanged. Each configuration
    keeps its ``data_identifier``: fitting changes patch and batch only, never the preprocessed data.

    Args:
        on_estimate: called with the configuration's name after each memory estimate (progress).
    """
    fitted_plans = copy.deepcopy(plans)
    fitted_plans["plans_name"] = plans_name
    results = []
    for name in configurations:

        def estimate(configuration: dict, batch_size: int, name: str = name) -> int:
            trial = copy.deepcopy(plans)
            trial["configurations"] = {name: configuration}
            peak = training_peak_bytes(trainer_class, trial, name, dataset_json, batch_size)
            if on_estimate is not None:
                on_estimate(name)
            return peak

        result = fit_configuration(
            name,
            plans["configurations"][name],
            estimate,
            gpu_memory_target_gb * GIB,
            int(dataset_json["numTraining"]),
        )
        fitted_plans["configurations"][name] = result.configuration
        results.append(result)
    return fitted_plans, results


def reuse_preprocessed_data(plans: dict, source_plans: dict) -> list[str]:
    """Point each configuration of ``plans`` at the data of the same configuration of ``source_plans`` where they
    preprocess alike (:data:`PREPROCESSING_KEYS`); returns the names of those configurations."""
    reused = []
    for name, configuration in plans["configurations"].items():
        source = source_plans["configurations"].get(name)
        if source is None or "data_identifier" not in source or "data_identifier" not in configuration:
            continue
        if all(configuration.get(key) == source.get(key) for key in PREPROCESSING_KEYS):
            configuration["data_identifier"] = source["data_identifier"]
            reused.append(name)
    return reused


def fitted_table(results: list[FittedConfiguration], source_plans_name: str, plans_name: str) -> str:
    """Markdown table: per configuration, patch and batch of the source plans and of the fitted ones and the
    estimated training peak."""
    header = (
        f"| configuration | {source_plans_name}: patch | batch | {plans_name}: patch | batch "
        "| estimated peak GB | memory estimates |"
    )
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in results:
        note = "" if r.fits else " (does not fit: smallest patch)"
        lines.append(
            f"| {r.name} | {'x'.join(map(str, r.default_patch_size))} | {r.default_batch_size} "
            f"| {'x'.join(map(str, r.patch_size))} | {r.batch_size} | {r.peak_bytes / GIB:.2f}{note} "
            f"| {r.estimates} |"
        )
    return "\n".join(lines)


def load_json(path: Path) -> dict:
    """``path`` parsed as JSON; a missing file or bad JSON raises naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error


def plan_for_trainer(
    dataset: str,
    trainer_name: str,
    configurations: list[str] | None,
    gpu_memory_target_gb: float = DEFAULT_GPU_MEMORY_TARGET_GB,
    plans_name: str | None = None,
    source_plans_name: str = "nnUNetPlans",
) -> tuple[Path, str, str]:
    """``nnUNetv2_ext_plan``: fit ``$nnUNet_preprocessed/DatasetXXX/<source>.json`` to ``trainer_name`` and write it
    as ``<plans_name>.json`` (atomically). Returns the file, the table and the training command.

    ``configurations`` None: every own configuration (:func:`own_configurations`) whose network the trainer can
    build (e.g. not 3d_fullres for a 2D-only architecture); named ones must all be buildable.
    """
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    if gpu_memory_target_gb <= 0:
        raise ValueError(f"-gpu_memory_target must be positive, got {gpu_memory_target_gb}")
    if nnUNet_preprocessed is None:
        raise ValueError("nnUNet_preprocessed is not set")
    dataset_name = maybe_convert_to_dataset_name(dataset)
    folder = Path(nnUNet_preprocessed) / dataset_name
    source = load_json(folder / f"{source_plans_name}.json")
    dataset_json = load_json(folder / "dataset.json")
    trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    plans_name = plans_name or default_plans_name(trainer_name, gpu_memory_target_gb)
    if plans_name == source_plans_name:
        raise ValueError(
            f"the new plans would overwrite {source_plans_name}.json: choose another -overwrite_plans_name"
        )
    available = own_configurations(source)
    if configurations is None:
        configurations = [name for name in available if trainer_builds(trainer_class, source, name, dataset_json)]
    else:
        for name in configurations:
            if name not in available:
                raise ValueError(f"{folder / source_plans_name}.json has no own configuration {name!r} ({available})")
    with tqdm(desc="memory estimates", unit="step", leave=False) as progress:
        plans, results = fit_plans(
            source,
            dataset_json,
            trainer_class,
            configurations,
            gpu_memory_target_gb,
            plans_name,
            on_estimate=lambda name: progress.update() or progress.set_postfix_str(name),
        )
    plans_file = folder / f"{plans_name}.json"
    write_json_atomically(plans_file, plans)
    table = fitted_table(results, source_plans_name, plans_name)
    first = results[0].name if results else "2d"
    return plans_file, table, f"nnUNetv2_train {dataset_name} {first} FOLD -tr {trainer_name} -p {plans_name}"


def trainer_builds(trainer_class: type, plans: dict, configuration: str, dataset_json: dict) -> bool:
    """Whether ``trainer_class`` builds for ``configuration`` (a 2D-only architecture refuses 3D with a
    ValueError, printed)."""
    try:
        initialised_trainer(
            trainer_class, benchmark_setting(plans, configuration, dataset_json, 2), torch.device("cpu")
        )
    except ValueError as error:
        print(f"{configuration}: not fitted ({error})")
        return False
    return True
