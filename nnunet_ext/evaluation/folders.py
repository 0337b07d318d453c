"""Evaluate a folder of predicted segmentations against a folder of references, nnU-Net style.

Files are read with nnU-Net's reader/writer classes, classes are nnU-Net labels or regions from ``dataset.json``
(``LabelManager``: foreground labels, or foreground regions for region-based datasets), voxels of the ignore label
are left out, cases are matched by file name as ``nnUNetv2_evaluate_folder`` does, and per-case work runs in a
``spawn`` pool (``num_processes=0``: in this process).
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nnunetv2.evaluation.evaluate_predictions import label_or_region_to_key, region_or_label_to_mask
from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
from nnunetv2.imageio.reader_writer_registry import (
    determine_reader_writer_from_dataset_json,
    determine_reader_writer_from_file_ending,
)
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from tqdm import tqdm

from nnunet_ext.data.file_checks import check_complete
from nnunet_ext.evaluation.metrics import METRICS
from nnunet_ext.evaluation.protocols import PROTOCOLS, LabelOrRegion, Protocol
from nnunet_ext.evaluation.reports import summarize


class EvaluationWarning(UserWarning):
    """Something about the evaluated files the user should know (the command line prints it as one line)."""


@dataclass(frozen=True)
class ClassSet:
    """The classes to score (nnU-Net labels or regions), their display names by key, and the ignore label."""

    classes: tuple[LabelOrRegion, ...]
    names: dict[str, str]
    ignore_label: int | None = None
    label_values: frozenset[int] | None = None
    """Every label value a segmentation may hold (background and the ignore label included); None: not checked."""

    @classmethod
    def from_label_manager(cls, label_manager: LabelManager) -> ClassSet:
        """Foreground regions of a region-based dataset, else foreground labels (as nnU-Net's evaluation), with the
        keys nnU-Net's ``summary.json`` uses (``"1"``, ``"(1, 2)"``)."""
        regions = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
        classes = tuple(_as_label_or_region(r) for r in regions)
        by_value = {_as_label_or_region(value): name for name, value in label_manager.label_dict.items()}
        names = {label_or_region_to_key(c): by_value.get(c, label_or_region_to_key(c)) for c in classes}
        values = {int(v) for v in label_manager.all_labels} | {0}
        if label_manager.ignore_label is not None:
            values.add(int(label_manager.ignore_label))
        return cls(classes, names, label_manager.ignore_label, frozenset(values))

    @classmethod
    def from_dataset_json(cls, dataset_json: dict) -> ClassSet:
        return cls.from_label_manager(LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order")))

    @classmethod
    def from_labels(cls, labels: Sequence[int]) -> ClassSet:
        """Plain labels named by their value (when there is no dataset.json)."""
        classes = tuple(sorted(int(label) for label in labels if label != 0))
        return cls(classes, {str(c): str(c) for c in classes}, label_values=frozenset({0, *classes}))

    @property
    def keys(self) -> list[str]:
        return [label_or_region_to_key(c) for c in self.classes]


def _as_label_or_region(value) -> LabelOrRegion:
    """nnU-Net's label (int) or region (tuple) in plain Python types."""
    return int(value) if np.isscalar(value) else tuple(int(v) for v in value)


@dataclass(frozen=True)
class EvaluationSettings:
    """What to compute: a protocol, the metrics (keys of ``METRICS``) and the NSD tolerance of each class key."""

    protocol: Protocol
    metrics: tuple[str, ...]
    tolerances: dict[str, float]

    @classmethod
    def create(
        cls,
        protocol: str,
        metrics: Sequence[str] | None,
        classes: ClassSet,
        tolerance_arguments: Sequence[str] = (),
    ) -> EvaluationSettings:
        """Validate the user's choices.

        ``tolerance_arguments``: ``"2"`` (every class) and/or ``"NAME=2"`` with NAME a class name, label value or
        region key such as ``(1, 2)``; later entries win. Classes not named get the protocol's tolerance.

        Raises:
            ValueError: unknown protocol, metric or class name, a tolerance that is not a non-negative number, or a
                class without a tolerance while NSD is requested.
        """
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        chosen = PROTOCOLS[protocol]
        metrics = tuple(metrics) if metrics else chosen.default_metrics
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or not metrics:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
        tolerances = _parse_tolerances(tolerance_arguments, classes)
        for c, key in zip(classes.classes, classes.keys):
            tolerances.setdefault(key, chosen.tolerance(c))
        if "nsd" in metrics:
            missing = [classes.names[k] for k, t in tolerances.items() if t is None]
            if missing:
                raise ValueError(
                    f"protocol {protocol!r} has no NSD tolerance for {', '.join(missing)}: pass --nsd-tolerance"
                )
            return cls(chosen, metrics, {k: float(t) for k, t in tolerances.items()})
        return cls(chosen, metrics, {})


def _parse_tolerances(arguments: Sequence[str], classes: ClassSet) -> dict[str, float | None]:
    lookup = {key: key for key in classes.keys} | {name: key for key, name in classes.names.items()}
    tolerances: dict[str, float | None] = {}
    for argument in arguments:
        name, _, value = argument.rpartition("=")
        try:
            tolerance = float(value)
        except ValueError:
            raise ValueError(f"NSD tolerance {argument!r}: {value!r} is not a number") from None
        if not np.isfinite(tolerance) or tolerance < 0:
            raise ValueError(f"NSD tolerance {argument!r} must be a finite number >= 0")
        if not name:
            tolerances.update(dict.fromkeys(classes.keys, tolerance))
        elif name.strip() in lookup:
            tolerances[lookup[name.strip()]] = tolerance
        else:
            raise ValueError(f"NSD tolerance {argument!r}: no class {name!r}; classes are {', '.join(lookup)}")
    return tolerances


def find_reader(file_ending: str, example_file: str | os.PathLike, dataset_json: dict | None) -> BaseReaderWriter:
    """nnU-Net's reader/writer for these files (``overwrite_image_reader_writer`` of dataset.json honoured)."""
    if dataset_json is not None:
        reader_class = determine_reader_writer_from_dataset_json(dataset_json, str(example_file), verbose=False)
    else:
        reader_class = determine_reader_writer_from_file_ending(
            file_ending, str(example_file), allow_nonmatching_filename=True, verbose=False
        )
    return reader_class()


def read_segmentation(reader: BaseReaderWriter, file: str | os.PathLike) -> tuple[np.ndarray, tuple[float, ...]]:
    """A label map of shape (X, Y) or (X, Y, Z) and its spacing per axis.

    nnU-Net's readers return (1, X, Y, Z) and give 2D images a dummy first axis of size 1 with spacing 999; that
    axis is dropped, so 2D cases are scored as 2D (a 3D edge would make every pixel a surface pixel).

    Raises:
        InvalidFileError: the file is truncated or corrupt (SimpleITK would read the missing part as zeros).
        RuntimeError: the reader cannot read it.
    """
    check_complete(file)
    try:
        segmentation, properties = reader.read_seg(str(file))
    except Exception as error:
        raise RuntimeError(f"cannot read segmentation {file}: {error}") from error
    segmentation, spacing = segmentation[0], tuple(float(s) for s in properties["spacing"])
    if segmentation.shape[0] == 1:
        return segmentation[0], spacing[1:]
    return segmentation, spacing


def evaluate_case(
    reference_file: str,
    prediction_file: str,
    reader: BaseReaderWriter,
    classes: ClassSet,
    settings: EvaluationSettings,
) -> dict:
    """Metrics of every class of one case: ``{"reference_file", "prediction_file", "metrics": {key: {column:
    value, "n_ref": voxels, "n_pred": voxels}}, "unexpected_labels": [values]}`` (columns as in ``METRICS``, e.g.
    ``Dice``, ``HD95``; ``unexpected_labels``: prediction values outside ``classes.label_values``)."""
    reference, spacing = read_segmentation(reader, reference_file)
    prediction, prediction_spacing = read_segmentation(reader, prediction_file)
    if reference.shape != prediction.shape:
        raise ValueError(
            f"{prediction_file} has shape {prediction.shape} but its reference {reference_file} has {reference.shape}"
        )
    if settings.protocol.physical_units and not np.allclose(spacing, prediction_spacing, rtol=1e-3):
        raise ValueError(
            f"{prediction_file} has spacing {prediction_spacing} but its reference {reference_file} has {spacing}"
        )
    valid = reference != classes.ignore_label if classes.ignore_label is not None else None
    results = {}
    for c, key in zip(classes.classes, classes.keys):
        mask_ref = region_or_label_to_mask(reference, c)
        mask_pred = region_or_label_to_mask(prediction, c)
        if valid is not None:
            # Ignored voxels count as background in both masks: nnU-Net leaves them out of TP/FP/FN, which is the
            # same for Dice and IoU; for the surface metrics a prediction reaching into the ignored region gets an
            # edge along its border (no surface metric is defined on partially annotated images).
            mask_ref, mask_pred = mask_ref & valid, mask_pred & valid
        values = settings.protocol.score(
            mask_ref, mask_pred, spacing, settings.metrics, settings.tolerances.get(key), label=c
        )
        results[key] = {METRICS[m].column: values[m] for m in settings.metrics} | {
            "n_ref": int(np.count_nonzero(mask_ref)),
            "n_pred": int(np.count_nonzero(mask_pred)),
        }
    allowed = classes.label_values
    unexpected = [] if allowed is None else [_plain(v) for v in np.unique(prediction).tolist() if v not in allowed]
    return {
        "reference_file": str(reference_file),
        "prediction_file": str(prediction_file),
        "metrics": results,
        "unexpected_labels": unexpected,
    }


def _plain(value: float) -> int | float:
    """A label value as readers return it (often float) in its plain form: 7.0 -> 7."""
    return int(value) if float(value).is_integer() else value


def _evaluate_case_from_tuple(arguments: tuple) -> dict:
    return evaluate_case(*arguments)


def match_cases(
    reference_folder: str | os.PathLike, prediction_folder: str | os.PathLike, file_ending: str, chill: bool
) -> list[tuple[str, Path, Path]]:
    """``(case, reference file, prediction file)`` for every prediction that has a reference, sorted by case.

    With ``chill``, references without a prediction and predictions without a reference are left out (the latter
    with an :class:`EvaluationWarning` naming them).

    Raises:
        FileNotFoundError: a folder is missing, there is no prediction, or (unless ``chill``) a prediction has no
            reference or a reference has no prediction.
    """
    reference_folder, prediction_folder = Path(reference_folder), Path(prediction_folder)
    for folder in (reference_folder, prediction_folder):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder")
    predictions = sorted(p.name for p in prediction_folder.iterdir() if p.name.endswith(file_ending))
    references = {p.name for p in reference_folder.iterdir() if p.name.endswith(file_ending)}
    if not predictions:
        raise FileNotFoundError(f"no predictions ending in {file_ending} in {prediction_folder}")
    orphans = [name for name in predictions if name not in references]
    if orphans and not chill:
        raise FileNotFoundError(
            f"no reference in {reference_folder} for {_listing(orphans)} (pass --chill to evaluate the others)"
        )
    if orphans:
        warnings.warn(
            f"no reference in {reference_folder} for {_listing(orphans)}: not evaluated",
            EvaluationWarning,
            stacklevel=2,
        )
        predictions = [name for name in predictions if name in references]
        if not predictions:
            raise FileNotFoundError(f"no prediction in {prediction_folder} has a reference in {reference_folder}")
    unpredicted = sorted(references.difference(predictions))
    if unpredicted and not chill:
        raise FileNotFoundError(
            f"no prediction in {prediction_folder} for {_listing(unpredicted)} (pass --chill to evaluate the others)"
        )
    return [(name[: -len(file_ending)], reference_folder / name, prediction_folder / name) for name in predictions]


def _listing(names: Sequence[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


class CaseWorkers:
    """Where per-case jobs run: a ``spawn`` pool (as nnU-Net's evaluation) started on first use and shared by every
    folder evaluated with it, so comparing many folds pays the workers' start-up (importing torch and MONAI) once;
    ``num_processes=0`` runs the jobs in this process."""

    def __init__(self, num_processes: int):
        if num_processes < 0:
            raise ValueError(f"the number of processes must be >= 0, not {num_processes}")
        self.num_processes = num_processes
        self._pool = None

    def imap(self, function: Callable, jobs: list) -> Iterator:
        if self.num_processes == 0:
            return map(function, jobs)
        if self._pool is None:
            self._pool = multiprocessing.get_context("spawn").Pool(min(self.num_processes, len(jobs)))
        return self._pool.imap(function, jobs)

    def __enter__(self) -> CaseWorkers:
        return self

    def __exit__(self, *exception) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None


def evaluate_folder(
    reference_folder: str | os.PathLike,
    prediction_folder: str | os.PathLike,
    reader: BaseReaderWriter,
    file_ending: str,
    classes: ClassSet,
    settings: EvaluationSettings,
    workers: CaseWorkers,
    chill: bool = False,
) -> dict:
    """Score every case and summarise: the result of ``reports.summarize`` plus the settings it was made with."""
    cases = match_cases(reference_folder, prediction_folder, file_ending, chill)
    jobs = [(str(ref), str(pred), reader, classes, settings) for _, ref, pred in cases]
    progress = {"total": len(jobs), "desc": f"evaluating {Path(prediction_folder).name}", "unit": "case"}
    per_case = list(tqdm(workers.imap(_evaluate_case_from_tuple, jobs), **progress))
    unexpected = {}
    for (case, _, _), result in zip(cases, per_case):
        result["case"] = case
        if values := result.pop("unexpected_labels"):
            unexpected[result["prediction_file"]] = values
    if unexpected:
        listed = "; ".join(f"{file}: {values}" for file, values in list(unexpected.items())[:5])
        more = f" and {len(unexpected) - 5} more file(s)" if len(unexpected) > 5 else ""
        warnings.warn(
            f"predictions hold label values the dataset does not define {sorted(classes.label_values)} "
            f"(they count as background): {listed}{more}",
            EvaluationWarning,
            stacklevel=2,
        )
    return {
        "protocol": settings.protocol.name,
        "protocol_summary": settings.protocol.summary,
        "empty_mask_policy": settings.protocol.empty_masks.describe(settings.metrics).splitlines(),
        "unit": settings.protocol.unit,
        "metrics": [METRICS[m].column for m in settings.metrics],
        "nsd_tolerance": settings.tolerances,
        "classes": classes.names,
        "ignore_label": classes.ignore_label,
        "reference_folder": str(reference_folder),
        "prediction_folder": str(prediction_folder),
        **summarize(per_case, classes.keys, [METRICS[m].column for m in settings.metrics]),
    }


def labels_in_folder(reader: BaseReaderWriter, files: Sequence[str | os.PathLike]) -> list[int]:
    """The union of the label values found in these segmentations."""
    values: set[int] = set()
    for file in tqdm(files, desc="collecting labels", unit="file"):
        values.update(int(v) for v in np.unique(read_segmentation(reader, file)[0]))
    return sorted(values)
