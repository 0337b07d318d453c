"""Learning curves of trained folds, read from the logging nnU-Net keeps in every checkpoint.

nnU-Net's ``nnUNetLogger`` stores per epoch the mean foreground pseudo-Dice of the validation batches
(``mean_fg_dice``), its exponential moving average (``ema_fg_dice``, which selects ``checkpoint_best.pth``), the mean
train and validation losses and the epoch's start and end timestamps; ``checkpoint_final.pth`` (or, for a run not
finished, ``checkpoint_latest.pth``) holds them for the whole run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nnunet_ext.checkpoints import load_training_checkpoint

#: checkpoints holding a fold's logging, the most complete first
CHECKPOINT_FILES = ("checkpoint_final.pth", "checkpoint_latest.pth")
#: nnU-Net's iterations per epoch, for runs whose debug.json does not say
DEFAULT_ITERATIONS_PER_EPOCH = 250


@dataclass
class LearningCurve:
    """One fold's curves, one value per logged epoch. ``elapsed_seconds``: from the start of the first epoch to the
    end of each epoch (training and validation; pauses of a run resumed with ``--c`` included)."""

    checkpoint: str
    iterations_per_epoch: int
    pseudo_dice: list[float]
    ema_pseudo_dice: list[float]
    train_loss: list[float]
    val_loss: list[float]
    elapsed_seconds: list[float]

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    @property
    def training_seconds(self) -> float:
        return self.elapsed_seconds[-1] if self.elapsed_seconds else math.nan

    @property
    def seconds_per_iteration(self) -> float:
        """Median epoch time over the iterations of an epoch (its validation included); the median leaves out a
        first epoch slowed by compilation or a resumed run's pause."""
        if not self.elapsed_seconds:
            return math.nan
        durations = np.diff([0.0, *self.elapsed_seconds])
        return float(np.median(durations)) / self.iterations_per_epoch

    @property
    def best_ema_pseudo_dice(self) -> float:
        """The best EMA pseudo-Dice: what nnU-Net selected ``checkpoint_best.pth`` by."""
        return max(self.ema_pseudo_dice) if self.ema_pseudo_dice else math.nan

    def to_json(self) -> dict:
        return {**asdict(self), "epochs": self.epochs}


def read_learning_curve(fold_folder: str | Path) -> LearningCurve | None:
    """The curves of ``fold_folder`` (``.../fold_X``) from its final, else its latest, checkpoint; None without one.

    Iterations per epoch come from the fold's ``debug.json`` (nnU-Net writes the trainer's attributes there, shortened
    schedules included), else nnU-Net's 250.
    """
    fold_folder = Path(fold_folder)
    files = [fold_folder / name for name in CHECKPOINT_FILES if (fold_folder / name).is_file()]
    if not files:
        return None
    logging = load_training_checkpoint(files[0])["logging"]
    epochs = min(len(logging[key]) for key in ("train_losses", "val_losses", "epoch_end_timestamps"))
    start = logging["epoch_start_timestamps"][0] if epochs else 0.0
    return LearningCurve(
        checkpoint=files[0].name,
        iterations_per_epoch=_iterations_per_epoch(fold_folder / "debug.json"),
        pseudo_dice=[float(v) for v in logging["mean_fg_dice"][:epochs]],
        ema_pseudo_dice=[float(v) for v in logging["ema_fg_dice"][:epochs]],
        train_loss=[float(v) for v in logging["train_losses"][:epochs]],
        val_loss=[float(v) for v in logging["val_losses"][:epochs]],
        elapsed_seconds=[float(end - start) for end in logging["epoch_end_timestamps"][:epochs]],
    )


def _iterations_per_epoch(debug_json: Path) -> int:
    if not debug_json.is_file():
        return DEFAULT_ITERATIONS_PER_EPOCH
    return int(json.loads(debug_json.read_text()).get("num_iterations_per_epoch", DEFAULT_ITERATIONS_PER_EPOCH))


def curves_table(curves: Mapping[str, Mapping[int, LearningCurve]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per trainer, means over its folds with curves: epochs, seconds per iteration, training time,
    best EMA pseudo-Dice and the last epoch's pseudo-Dice."""
    header = [
        "trainer",
        "folds",
        "epochs",
        "s / iteration",
        "training time",
        "best EMA pseudo-Dice",
        "last pseudo-Dice",
    ]
    rows = []
    for trainer, folds in curves.items():
        if not folds:
            rows.append([trainer, "-", "no checkpoint", *[""] * (len(header) - 3)])
            continue
        runs = list(folds.values())
        seconds = float(np.mean([c.training_seconds for c in runs]))
        rows.append(
            [
                trainer,
                ",".join(map(str, folds)),
                f"{np.mean([c.epochs for c in runs]):g}",
                f"{np.mean([c.seconds_per_iteration for c in runs]):.3f}",
                f"{seconds / 60:.1f} min",
                f"{np.mean([c.best_ema_pseudo_dice for c in runs]):.4f}",
                f"{np.mean([c.pseudo_dice[-1] if c.pseudo_dice else math.nan for c in runs]):.4f}",
            ]
        )
    return header, rows


def fold_curves(trainer_folder: str | Path, folds: Sequence[int]) -> dict[int, LearningCurve]:
    """The curves of the ``folds`` of ``trainer_folder`` that have a checkpoint."""
    curves = {fold: read_learning_curve(Path(trainer_folder) / f"fold_{fold}") for fold in folds}
    return {fold: curve for fold, curve in curves.items() if curve is not None}
