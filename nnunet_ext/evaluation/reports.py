"""Summaries and report files: means over cases, JSON, CSV, markdown tables and box plots (matplotlib, Agg).

A summary has the structure of nnU-Net's ``summary.json`` (``metric_per_case``, ``mean``, ``foreground_mean``, keys
``"1"`` or ``"(1, 2)"``) plus ``std``, so the files of both tools read alike.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_ext.data.atomic import atomic_directory, staging_directory
from nnunet_ext.evaluation.learning_curves import LearningCurve, curves_table
from nnunet_ext.evaluation.metrics import METRICS

EVALUATION_JSON = "metrics.json"
COMPARISON_JSON = "compare.json"
LEARNING_CURVES_PNG = "learning_curves.png"


def nanmean(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN; NaN if there are none."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def nanstd(values: Sequence[float]) -> float:
    """Population standard deviation of the values that are not NaN; NaN if there are none."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.std(finite)) if finite else float("nan")


def summarize(per_case: list[dict], keys: Sequence[str], columns: Sequence[str]) -> dict:
    """``mean`` and ``std`` per class over the cases (NaN left out) and ``foreground_mean``, the mean over classes of
    the class means (as nnU-Net: NaN if a class has no value in any case)."""
    mean = {k: {c: nanmean([case["metrics"][k][c] for case in per_case]) for c in columns} for k in keys}
    std = {k: {c: nanstd([case["metrics"][k][c] for case in per_case]) for c in columns} for k in keys}
    foreground_mean = {c: float(np.mean([mean[k][c] for k in keys])) for c in columns}
    return {
        "num_cases": len(per_case),
        "metric_per_case": per_case,
        "mean": mean,
        "std": std,
        "foreground_mean": foreground_mean,
    }


def case_foreground_means(per_case: list[dict], column: str) -> list[float]:
    """Per case, the mean over its classes of ``column`` (NaN left out); cases with no value are dropped."""
    means = [nanmean([values[column] for values in case["metrics"].values()]) for case in per_case]
    return [m for m in means if not math.isnan(m)]


def check_report_folder(target: str | os.PathLike, marker: str) -> None:
    """Refuse an output folder that exists, is not empty and is not a report of the same command (it holds no
    ``marker``), so a mistyped output path never overwrites predictions or references.

    Raises:
        FileExistsError: ``target`` exists and is not such a report, or is not a folder.
    """
    target = Path(target)
    if not target.exists() or (target / marker).is_file():
        return
    if not target.is_dir() or any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not a report folder (it has no {marker}); choose another -o")


@contextmanager
def report_folder(target: str | os.PathLike, marker: str) -> Iterator[Path]:
    """A staging folder whose files make up the report in ``target`` when the block succeeds.

    A new ``target`` is created whole (:func:`~nnunet_ext.data.atomic.atomic_directory`). An existing one (an earlier
    report, or an empty folder; see :func:`check_report_folder`) is never removed: each file of the new report
    replaces its namesake atomically, ``marker`` last, and whatever else the folder holds stays.
    """
    target = Path(target)
    check_report_folder(target, marker)
    if not target.exists():
        with atomic_directory(target) as staging:
            yield staging
        return
    staging = staging_directory(target, f".{marker}.", ".partial")
    try:
        yield staging
        for file in sorted(staging.iterdir(), key=lambda path: path.name == marker):
            os.replace(file, target / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(data: dict, file: str | os.PathLike) -> None:
    """JSON with NaN for missing values (as nnU-Net's summary.json)."""
    with open(file, "w") as handle:
        json.dump(data, handle, indent=2, allow_nan=True)


def _format(value: float, column: str) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.2f}" if _is_distance(column) else f"{value:.4f}"


def _is_distance(column: str) -> bool:
    return any(info.is_distance and column.startswith(info.column) for info in METRICS.values())


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _draw_boxes(axis, groups: dict[str, list[float]], title: str, ylabel: str = "") -> None:
    """One box (with its mean marked) per group; a group without values gets an empty slot."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        axis.boxplot([values or [float("nan")] for values in groups.values()], showmeans=True)
    axis.set_xticks(range(1, len(groups) + 1), list(groups), rotation=30, ha="right")
    axis.set_title(title)
    axis.set_ylabel(ylabel)
    axis.grid(axis="y", alpha=0.3)


def _new_figure(width: float, height: float):
    """A matplotlib figure drawn by the Agg canvas, without pyplot's global state."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="tight")


def _column_label(column: str, unit: str) -> str:
    return f"{column} ({unit})" if _is_distance(column) else column


def write_evaluation_report(summary: dict, folder: str | os.PathLike) -> Path:
    """Write ``metrics.json``, ``metrics_per_case.csv``, ``summary.md`` and ``boxplot_<metric>.png`` into ``folder``
    (replacing the files of an earlier report there, each atomically; see :func:`report_folder`). Returns the
    folder."""
    columns, classes, unit = summary["metrics"], summary["classes"], summary["unit"]
    with report_folder(folder, EVALUATION_JSON) as staging:
        write_json(summary, staging / EVALUATION_JSON)
        with open(staging / "metrics_per_case.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["case", "class", "name", *columns, "n_ref", "n_pred"])
            for case in summary["metric_per_case"]:
                for key, values in case["metrics"].items():
                    counts = (values["n_ref"], values["n_pred"])
                    writer.writerow([case["case"], key, classes[key], *(values[c] for c in columns), *counts])
        rows = [
            [f"{name} ({key})"]
            + [f"{_format(summary['mean'][key][c], c)} ± {_format(summary['std'][key][c], c)}" for c in columns]
            for key, name in classes.items()
        ]
        rows.append(["**foreground mean**"] + [f"**{_format(summary['foreground_mean'][c], c)}**" for c in columns])
        tolerances = ", ".join(f"{classes[k]} {t:g}" for k, t in summary["nsd_tolerance"].items())
        text = [
            f"# Evaluation: protocol `{summary['protocol']}`",
            "",
            f"{summary['num_cases']} cases; predictions `{summary['prediction_folder']}`, references "
            f"`{summary['reference_folder']}`. Mean ± standard deviation over cases; distances in {unit}.",
            "",
            summary["protocol_summary"],
            "",
            "Empty masks:",
            "",
            *[f"- {line}" for line in summary["empty_mask_policy"]],
            "",
            *([f"NSD tolerance ({unit}): {tolerances}.", ""] if tolerances else []),
            _markdown_table(["class", *(_column_label(c, unit) for c in columns)], rows),
            "",
        ]
        (staging / "summary.md").write_text("\n".join(text))
        for column in columns:
            groups = {
                classes[key]: [
                    v for case in summary["metric_per_case"] if not math.isnan(v := case["metrics"][key][column])
                ]
                for key in classes
            }
            figure = _new_figure(max(4.0, 0.9 * len(groups) + 2), 4)
            _draw_boxes(figure.subplots(), groups, f"{column} per case", _column_label(column, unit))
            figure.savefig(staging / f"boxplot_{column.lower()}.png", dpi=120)
    return Path(folder)


@dataclass(frozen=True)
class Column:
    """One compared quantity: a metric from nnU-Net's ``summary.json`` or from the extended evaluation."""

    label: str
    metric: str
    from_nnunet_summary: bool
    higher_is_better: bool


@dataclass
class TrainerSummary:
    """One trainer's cross-validation results, per column: the foreground mean of each fold, the class means
    averaged over folds, the per-case foreground means of all folds (for the plot) and the learning curves of the
    folds with a checkpoint."""

    trainer: str
    folder: str
    folds: list[int]
    num_cases: int
    fold_means: dict[str, dict[int, float]] = field(default_factory=dict)
    class_means: dict[str, dict[str, float]] = field(default_factory=dict)
    case_values: dict[str, list[float]] = field(default_factory=dict)
    curves: dict[int, LearningCurve] = field(default_factory=dict)


def write_comparison_report(
    trainers: Sequence[TrainerSummary], columns: Sequence[Column], header: dict, folder: str | os.PathLike
) -> Path:
    """Write ``compare.json``, ``compare.csv``, ``compare.md``, ``compare.png`` and, when a trainer has a checkpoint
    with logging, ``learning_curves.png`` into ``folder``."""
    with report_folder(folder, COMPARISON_JSON) as staging:
        write_json(
            {
                **header,
                "columns": [c.label for c in columns],
                "trainers": {
                    t.trainer: {
                        "folder": t.folder,
                        "folds": t.folds,
                        "num_cases": t.num_cases,
                        "mean": {c.label: nanmean(list(t.fold_means[c.label].values())) for c in columns},
                        "std": {c.label: nanstd(list(t.fold_means[c.label].values())) for c in columns},
                        "fold_means": t.fold_means,
                        "class_means": t.class_means,
                        "learning_curves": {fold: curve.to_json() for fold, curve in t.curves.items()},
                    }
                    for t in trainers
                },
            },
            staging / COMPARISON_JSON,
        )
        with open(staging / "compare.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["trainer", "fold", "metric", "class", "value"])
            for t in trainers:
                for c in columns:
                    for fold, value in t.fold_means[c.label].items():
                        writer.writerow([t.trainer, fold, c.label, "foreground_mean", value])
                    for key, value in t.class_means[c.label].items():
                        writer.writerow([t.trainer, "mean_over_folds", c.label, key, value])
        (staging / "compare.md").write_text(_comparison_markdown(trainers, columns, header))
        _comparison_plot(staging / "compare.png", trainers, columns, header["unit"])
        if any(t.curves for t in trainers):
            _learning_curves_plot(staging / LEARNING_CURVES_PNG, {t.trainer: t.curves for t in trainers})
    return Path(folder)


def _comparison_markdown(trainers: Sequence[TrainerSummary], columns: Sequence[Column], header: dict) -> str:
    unit, classes = header["unit"], header["classes"]

    def best(values: list[float], column: Column) -> float:
        finite = [v for v in values if not math.isnan(v)]
        return (max if column.higher_is_better else min)(finite) if finite else float("nan")

    means = {c.label: [nanmean(list(t.fold_means[c.label].values())) for t in trainers] for c in columns}
    stds = {c.label: [nanstd(list(t.fold_means[c.label].values())) for t in trainers] for c in columns}
    rows = []
    for i, t in enumerate(trainers):
        row = [t.trainer, ",".join(map(str, t.folds)), str(t.num_cases)]
        for c in columns:
            cell = f"{_format(means[c.label][i], c.metric)} ± {_format(stds[c.label][i], c.metric)}"
            row.append(f"**{cell}**" if means[c.label][i] == best(means[c.label], c) else cell)
        rows.append(row)
    text = [
        f"# Cross-validation comparison: {header['dataset']}, {header['configuration']}, {header['plans']}",
        "",
        f"Foreground mean per fold, mean ± standard deviation over folds; best in bold. Columns marked (nnU-Net) are "
        f"read from nnU-Net's `summary.json`; the others are computed with protocol `{header['protocol']}` "
        f"(distances in {unit}).",
        "",
        _markdown_table(["trainer", "folds", "cases", *(_column_label(c.label, unit) for c in columns)], rows),
        "",
    ]
    if any(t.curves for t in trainers):
        text += [
            "## Training (means over folds)",
            "",
            "From nnU-Net's logging in each fold's final (else latest) checkpoint: seconds per iteration is the median "
            "epoch time (its validation included) over the iterations per epoch; the pseudo-Dice is nnU-Net's, on "
            f"validation patches. Curves: `{LEARNING_CURVES_PNG}`.",
            "",
            _markdown_table(*curves_table({t.trainer: t.curves for t in trainers})),
            "",
        ]
    for c in columns:
        class_rows = [
            [t.trainer, *(_format(t.class_means[c.label].get(key, float("nan")), c.metric) for key in classes)]
            for t in trainers
        ]
        text += [
            f"## {_column_label(c.label, unit)} per class (mean over folds)",
            "",
            _markdown_table(["trainer", *classes.values()], class_rows),
            "",
        ]
    return "\n".join(text)


def _comparison_plot(file: Path, trainers: Sequence[TrainerSummary], columns: Sequence[Column], unit: str) -> None:
    """One panel per column, at most four in a row."""
    ncols = min(4, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    figure = _new_figure(max(4.0, 1.2 * len(trainers) + 1.5) * ncols, 4.5 * nrows)
    axes = np.atleast_1d(figure.subplots(nrows, ncols)).ravel()
    for axis, column in zip(axes, columns):
        groups = {t.trainer: t.case_values[column.label] for t in trainers}
        _draw_boxes(axis, groups, _column_label(column.label, unit))
    for axis in axes[len(columns) :]:
        axis.set_visible(False)
    figure.suptitle("per-case foreground mean, all validation folds")
    figure.savefig(file, dpi=120)


def _learning_curves_plot(file: Path, curves: Mapping[str, Mapping[int, LearningCurve]]) -> None:
    """Pseudo-Dice (top) and train (solid) / validation (dashed) loss (bottom), against epoch (left) and wall-clock
    minutes (right); one colour per trainer, one line per fold."""
    figure = _new_figure(13.0, 8.0)
    axes = figure.subplots(2, 2)
    for number, (trainer, folds) in enumerate(curves.items()):
        colour = f"C{number % 10}"  # matplotlib's colour cycle
        for index, curve in enumerate(folds.values()):
            label = trainer if index == 0 else None
            epochs = np.arange(1, curve.epochs + 1)
            minutes = np.asarray(curve.elapsed_seconds) / 60
            for column, x in enumerate((epochs, minutes)):
                axes[0, column].plot(x, curve.pseudo_dice, color=colour, label=label)
                axes[1, column].plot(x, curve.train_loss, color=colour, label=label)
                axes[1, column].plot(x, curve.val_loss, color=colour, linestyle="--")
    for column, xlabel in enumerate(("epoch", "wall-clock minutes")):
        axes[0, column].set(xlabel=xlabel, ylabel="validation pseudo-Dice (foreground mean)")
        axes[1, column].set(xlabel=xlabel, ylabel="loss (train solid, validation dashed)")
    axes[0, 0].legend(fontsize="small")
    figure.suptitle("learning curves (nnU-Net's logging in the checkpoints)")
    figure.savefig(file, dpi=110)
