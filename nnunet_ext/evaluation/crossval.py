"""Cross-validation results of several trainers side by side.

Per trainer and fold this reads nnU-Net's own ``fold_X/validation/summary.json`` and the extended metrics of the
same validation predictions, scored against ``$nnUNet_preprocessed/DatasetXXX/gt_segmentations`` (the references
nnU-Net's validation uses). Extended metrics are computed once and cached in the validation folder
(``summary_ext_<protocol>.json``); the cache is used again only while the metrics, tolerances and the size and
modification time of every prediction and reference are unchanged.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_ext.data.atomic import atomic_file
from nnunet_ext.evaluation.folders import CaseWorkers, ClassSet, EvaluationSettings, evaluate_folder, match_cases
from nnunet_ext.evaluation.learning_curves import fold_curves
from nnunet_ext.evaluation.metrics import METRICS
from nnunet_ext.evaluation.protocols import PROTOCOLS
from nnunet_ext.evaluation.reports import Column, TrainerSummary, case_foreground_means, nanmean, write_json

NAN = float("nan")
NNUNET_COLUMNS = (
    Column("Dice (nnU-Net)", "Dice", from_nnunet_summary=True, higher_is_better=True),
    Column("IoU (nnU-Net)", "IoU", from_nnunet_summary=True, higher_is_better=True),
)


def cache_file(validation_folder: str | os.PathLike, protocol: str) -> Path:
    return Path(validation_folder) / f"summary_ext_{protocol}.json"


def validation_folds(trainer_folder: str | os.PathLike) -> list[int]:
    """Folds of a trained model whose validation nnU-Net has finished (``fold_X/validation/summary.json``)."""
    folds = []
    for folder in Path(trainer_folder).glob("fold_*"):
        suffix = folder.name.removeprefix("fold_")
        if suffix.isdigit() and (folder / "validation" / "summary.json").is_file():
            folds.append(int(suffix))
    return sorted(folds)


def extended_fold_summary(
    validation_folder: str | os.PathLike,
    gt_folder: str | os.PathLike,
    plans_manager: PlansManager,
    dataset_json: dict,
    classes: ClassSet,
    settings: EvaluationSettings,
    workers: CaseWorkers,
    recompute: bool = False,
) -> dict:
    """The extended summary of one fold's validation predictions, from the cache when it is still valid."""
    file_ending = dataset_json["file_ending"]
    cases = match_cases(gt_folder, validation_folder, file_ending, chill=True)
    key = {
        "metrics": [METRICS[m].column for m in settings.metrics],
        "nsd_tolerance": settings.tolerances,
        "files": [[str(path), *_stamp(path)] for _, reference, prediction in cases for path in (reference, prediction)],
    }
    cache = cache_file(validation_folder, settings.protocol.name)
    if cache.is_file() and not recompute:
        cached = load_json(str(cache))
        if cached.get("cache_key") == key:
            return cached
    reader = plans_manager.image_reader_writer_class()
    summary = evaluate_folder(gt_folder, validation_folder, reader, file_ending, classes, settings, workers, True)
    summary["cache_key"] = key
    _write_cache(summary, cache)
    return summary


def _stamp(path: Path) -> list[int]:
    status = path.stat()
    return [status.st_size, status.st_mtime_ns]


def _write_cache(summary: dict, cache: Path) -> None:
    """Write atomically (a reader never sees half a file); a read-only results folder only costs the cache."""
    try:
        with atomic_file(cache) as temporary:
            write_json(summary, temporary)
    except OSError as error:
        warnings.warn(f"could not cache extended metrics in {cache}: {error}", stacklevel=2)


def compare_trainers(
    trainer_folders: Mapping[str, str | os.PathLike],
    gt_folder: str | os.PathLike,
    protocol: str,
    metrics: Sequence[str] | None,
    tolerance_arguments: Sequence[str] = (),
    folds: Sequence[int] | None = None,
    num_processes: int = 0,
    recompute: bool = False,
) -> tuple[list[TrainerSummary], list[Column], dict]:
    """Collect each trainer's folds: nnU-Net's Dice and IoU plus the extended metrics.

    ``trainer_folders``: display name -> ``$nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>``.
    ``folds``: None takes every fold with a finished validation (they may differ between trainers).

    Returns:
        The per-trainer summaries, the compared columns and a header (classes, protocol, unit, tolerances) for
        ``reports.write_comparison_report``.

    Raises:
        FileNotFoundError: a trainer folder, a requested fold's validation, or any fold at all is missing.
        ValueError: the trainers were trained on different labels.
    """
    if not Path(gt_folder).is_dir():
        raise FileNotFoundError(f"reference segmentations {gt_folder} not found (run nnUNetv2_plan_and_preprocess)")
    models = {name: _load_model(Path(folder)) for name, folder in trainer_folders.items()}
    first_name, (plans_manager, dataset_json) = next(iter(models.items()))
    for name, (_, other) in models.items():
        if other["labels"] != dataset_json["labels"]:
            raise ValueError(f"{name} and {first_name} were trained on different labels; they cannot be compared")
    classes = ClassSet.from_label_manager(plans_manager.get_label_manager(dataset_json))
    if metrics is None and protocol == "nnunet":
        # nnunet's Dice and IoU are nnU-Net's own: by default they come from summary.json only, not twice.
        metrics = [m for m in PROTOCOLS[protocol].default_metrics if m not in ("dice", "iou")]
    settings = EvaluationSettings.create(protocol, metrics, classes, tolerance_arguments)
    columns = [*NNUNET_COLUMNS]
    for metric in (METRICS[m] for m in settings.metrics):
        columns.append(Column(metric.column, metric.column, False, metric.higher_is_better))
    trainer_folds = {name: _folds_of(Path(folder), folds) for name, folder in trainer_folders.items()}
    summaries = []
    with CaseWorkers(num_processes) as workers:
        for name, folder in trainer_folders.items():
            plans_manager, dataset_json = models[name]
            fold_summaries = {}
            for fold in trainer_folds[name]:
                validation = Path(folder) / f"fold_{fold}" / "validation"
                fold_summaries[fold] = (
                    load_json(str(validation / "summary.json")),
                    extended_fold_summary(
                        validation, gt_folder, plans_manager, dataset_json, classes, settings, workers, recompute
                    ),
                )
            summary = _trainer_summary(name, Path(folder), fold_summaries, columns, classes.keys)
            summary.curves = fold_curves(folder, trainer_folds[name])
            summaries.append(summary)
    header = {
        "protocol": settings.protocol.name,
        "unit": settings.protocol.unit,
        "classes": classes.names,
        "nsd_tolerance": settings.tolerances,
    }
    return summaries, columns, header


def _load_model(folder: Path) -> tuple[PlansManager, dict]:
    for file in ("plans.json", "dataset.json"):
        if not (folder / file).is_file():
            raise FileNotFoundError(f"{folder / file} not found: is {folder} an nnU-Net training output folder?")
    return PlansManager(str(folder / "plans.json")), json.loads((folder / "dataset.json").read_text())


def _folds_of(folder: Path, folds: Sequence[int] | None) -> list[int]:
    available = validation_folds(folder)
    if folds is None:
        if not available:
            raise FileNotFoundError(f"{folder} has no fold with a finished validation (fold_X/validation/summary.json)")
        return available
    missing = [f for f in folds if f not in available]
    if missing:
        raise FileNotFoundError(
            f"{folder}: no validation/summary.json for fold(s) {', '.join(map(str, missing))} "
            f"(folds with results: {', '.join(map(str, available)) or 'none'})"
        )
    return list(folds)


def _trainer_summary(
    name: str, folder: Path, fold_summaries: dict[int, tuple[dict, dict]], columns: Sequence[Column], keys: list[str]
) -> TrainerSummary:
    """Both summaries share nnU-Net's layout (``foreground_mean``, ``mean``, ``metric_per_case``)."""
    summary = TrainerSummary(
        trainer=name,
        folder=str(folder),
        folds=list(fold_summaries),
        num_cases=sum(len(nnunet["metric_per_case"]) for nnunet, _ in fold_summaries.values()),
    )
    for column in columns:
        sources = {fold: pair[0] if column.from_nnunet_summary else pair[1] for fold, pair in fold_summaries.items()}
        summary.fold_means[column.label] = {
            fold: float(source["foreground_mean"][column.metric]) for fold, source in sources.items()
        }
        summary.class_means[column.label] = {
            key: nanmean([float(source["mean"].get(key, {}).get(column.metric, NAN)) for source in sources.values()])
            for key in keys
        }
        summary.case_values[column.label] = [
            value
            for source in sources.values()
            for value in case_foreground_means(source["metric_per_case"], column.metric)
        ]
    return summary
