"""Semi-supervised splits: per fold of nnU-Net's ``splits_final.json``, which training cases keep their labels.

``splits_ssl.json`` (in the dataset's preprocessed folder, written by ``nnUNetv2_ext_ssl_split``)::

    {"created_by": "nnUNetv2_ext_ssl_split", "seed": 0, "labeled_fraction": 0.25, "labeled_count": null,
     "folds": [{"labeled": [...], "unlabeled": [...], "val": [...]}, ...]}

``folds[f]`` splits fold f's training cases into ``labeled`` and ``unlabeled`` (these join the unlabeled pool; their
labels are never read); ``val`` is fold f's validation cases, which never enter a pool. Without the file every
training case is labeled.

Selection (:func:`select_labeled`): the fold's training cases are shuffled with the seed; first a greedy cover adds,
in shuffled order, the case showing the most classes not yet covered until every class present in the fold appears in
the labeled subset (a warning names the classes that do not fit); the remaining places are filled in shuffled order.
So the same seed gives the same split, and a smaller labeled count a subset of a larger one (once the cover fits).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_pickle
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.crossval_split import generate_crossval_split
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_ext.data.atomic import write_json_atomically
from nnunet_ext.ssl.layout import SPLITS_FINAL_FILE, SSL_SPLITS_FILE

CREATED_BY = "nnUNetv2_ext_ssl_split"


class SplitMismatchError(RuntimeError):
    """``splits_ssl.json`` does not fit the fold being trained."""


@dataclass(frozen=True)
class SSLFold:
    """One fold of the semi-supervised split."""

    labeled: list[str]
    unlabeled: list[str]
    val: list[str]


def labeled_count_for(num_training: int, labeled_fraction: float | None, labeled_count: int | None) -> int:
    """Labeled cases of a fold with ``num_training`` training cases: ``round(fraction * n)`` (half up, at least 1)
    or ``labeled_count``.

    Raises:
        ValueError: not exactly one of the two is given, the fraction is outside (0, 1], or the count is outside
            1..num_training.
    """
    if (labeled_fraction is None) == (labeled_count is None):
        raise ValueError("give exactly one of labeled_fraction and labeled_count")
    if labeled_fraction is not None:
        if not 0 < labeled_fraction <= 1:
            raise ValueError(f"labeled fraction must be in (0, 1], got {labeled_fraction}")
        return max(1, math.floor(labeled_fraction * num_training + 0.5))
    if not 1 <= labeled_count <= num_training:
        raise ValueError(f"labeled count {labeled_count} is not within 1..{num_training} (training cases of the fold)")
    return labeled_count


def select_labeled(
    training_cases: Sequence[str], presence: Mapping[str, frozenset[Hashable]], count: int, rng: np.random.Generator
) -> tuple[list[str], set[Hashable]]:
    """``count`` cases of ``training_cases`` covering every class present among them when possible.

    Args:
        presence: case -> the classes (labels or regions) present in its label map.

    Returns:
        The labeled cases (sorted) and the classes present in the fold that they do not cover.
    """
    order = [training_cases[i] for i in rng.permutation(len(training_cases))]
    uncovered = set().union(*(presence[case] for case in training_cases))
    labeled: list[str] = []
    while uncovered and len(labeled) < count:
        best = max((case for case in order if case not in labeled), key=lambda case: len(presence[case] & uncovered))
        if not presence[best] & uncovered:
            break
        labeled.append(best)
        uncovered -= presence[best]
    labeled += [case for case in order if case not in labeled][: count - len(labeled)]
    return sorted(labeled), uncovered


def make_ssl_splits(
    splits_final: Sequence[Mapping[str, Sequence[str]]],
    presence: Mapping[str, frozenset[Hashable]],
    labeled_fraction: float | None = None,
    labeled_count: int | None = None,
    seed: int = 0,
) -> tuple[dict, list[str]]:
    """The ``splits_ssl.json`` content for ``splits_final`` and the warnings (classes a labeled subset misses).

    Args:
        presence: case -> classes present, for every training case of every fold.
    """
    all_classes = set().union(*presence.values())
    folds, warnings = [], []
    for fold, split in enumerate(splits_final):
        training = sorted(split["train"])
        count = labeled_count_for(len(training), labeled_fraction, labeled_count)
        labeled, uncovered = select_labeled(training, presence, count, np.random.default_rng([seed, fold]))
        absent = all_classes - set().union(*(presence[case] for case in training))
        if uncovered:
            warnings.append(
                f"fold {fold}: {count} labeled case(s) cannot show every class; missing {_names(uncovered)}"
            )
        if absent:
            warnings.append(f"fold {fold}: class(es) {_names(absent)} appear in no training case of this fold")
        folds.append(
            {"labeled": labeled, "unlabeled": sorted(set(training) - set(labeled)), "val": sorted(split["val"])}
        )
    content = {
        "created_by": CREATED_BY,
        "seed": seed,
        "labeled_fraction": labeled_fraction,
        "labeled_count": labeled_count,
        "folds": folds,
    }
    return content, warnings


def class_presence(labeled_folder: str | os.PathLike, cases: Sequence[str]) -> dict[str, frozenset[Hashable]]:
    """Case -> classes (labels, or regions as tuples) present, from the ``class_locations`` nnU-Net's preprocessing
    stores in each case's ``.pkl`` (the ignore label's sampling key is left out)."""
    presence = {}
    for case in cases:
        locations = load_pickle(os.path.join(labeled_folder, f"{case}.pkl"))["class_locations"]
        presence[case] = frozenset(
            key for key, points in locations.items() if len(points) > 0 and not (isinstance(key, tuple) and -1 in key)
        )
    return presence


def load_ssl_fold(
    preprocessed_dataset_folder: str | os.PathLike, fold: int | str, train_keys: Sequence[str], val_keys: Sequence[str]
) -> SSLFold | None:
    """Fold ``fold`` of ``splits_ssl.json``, checked against nnU-Net's split of that fold; None without the file.

    Raises:
        SplitMismatchError: the file has no such fold (also for fold ``"all"``), or it was derived from another
            ``splits_final.json`` (its fold's cases differ from ``train_keys``/``val_keys``).
    """
    path = Path(preprocessed_dataset_folder) / SSL_SPLITS_FILE
    if not path.is_file():
        return None
    folds = json.loads(path.read_text())["folds"]
    if not isinstance(fold, int) or not 0 <= fold < len(folds):
        raise SplitMismatchError(
            f"{path} defines folds 0..{len(folds) - 1}; fold {fold!r} has no labeled subset. Train one of those "
            f"folds, or remove {path} to train with every training case labeled"
        )
    entry = folds[fold]
    if set(entry["labeled"]) | set(entry["unlabeled"]) != set(train_keys) or set(entry["val"]) != set(val_keys):
        raise SplitMismatchError(
            f"fold {fold} of {path} was derived from another {SPLITS_FINAL_FILE} (its cases differ from nnU-Net's "
            f"fold {fold}); re-run nnUNetv2_ext_ssl_split with --overwrite"
        )
    return SSLFold(list(entry["labeled"]), list(entry["unlabeled"]), list(entry["val"]))


def _names(classes: set[Hashable]) -> str:
    return ", ".join(str(c) for c in sorted(classes, key=str))


def load_or_create_splits_final(preprocessed_folder: Path, identifiers: Sequence[str]) -> list[dict]:
    """nnU-Net's folds from ``splits_final.json``, created as nnU-Net's trainer creates it when missing
    (``generate_crossval_split`` of the sorted ``identifiers``, seed 12345, 5 folds), so a later ``nnUNetv2_train``
    uses the same folds."""
    splits_file = Path(preprocessed_folder) / SPLITS_FINAL_FILE
    if splits_file.is_file():
        return json.loads(splits_file.read_text())
    splits = generate_crossval_split(sorted(identifiers), seed=12345, n_splits=5)
    write_json_atomically(splits_file, splits)
    return splits


def create_ssl_split_file(
    dataset_name_or_id: int | str,
    labeled_fraction: float | None = None,
    labeled_count: int | None = None,
    seed: int = 0,
    plans_identifier: str = "nnUNetPlans",
    configuration: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, dict, list[str]]:
    """Write ``splits_ssl.json`` of a preprocessed dataset; returns its path, content and the warnings.

    Class presence is read from the ``.pkl`` files of the labeled folder of ``configuration`` (default: the first
    configuration of the plans that is preprocessed). Without ``splits_final.json`` it is created first, as nnU-Net's
    trainer would (5 folds, seed 12345, over the sorted training cases).

    Raises:
        FileExistsError: ``splits_ssl.json`` exists and ``overwrite`` is False.
        FileNotFoundError: no preprocessed configuration, or a case of the split is not preprocessed.
        ValueError: invalid fraction/count.
    """
    dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
    preprocessed = Path(nnUNet_preprocessed) / dataset_name
    target = preprocessed / SSL_SPLITS_FILE
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass --overwrite to replace it (models trained on it then differ)")
    labeled_folder = _labeled_folder(preprocessed, plans_identifier, configuration)
    splits_file = preprocessed / SPLITS_FINAL_FILE
    identifiers = infer_dataset_class(str(labeled_folder)).get_identifiers(str(labeled_folder))
    splits_final = load_or_create_splits_final(preprocessed, identifiers)
    training = sorted({case for split in splits_final for case in split["train"]})
    missing = [case for case in training if not (labeled_folder / f"{case}.pkl").is_file()]
    if missing:
        raise FileNotFoundError(
            f"training case(s) of {splits_file} not preprocessed in {labeled_folder}: {', '.join(missing[:5])}"
        )
    presence = class_presence(labeled_folder, training)
    content, warnings = make_ssl_splits(splits_final, presence, labeled_fraction, labeled_count, seed)
    write_json_atomically(target, content)
    return target, content, warnings


def _labeled_folder(preprocessed: Path, plans_identifier: str, configuration: str | None) -> Path:
    plans_file = preprocessed / f"{plans_identifier}.json"
    if not plans_file.is_file():
        raise FileNotFoundError(f"{plans_file} not found: run nnUNetv2_plan_and_preprocess first")
    plans_manager = PlansManager(str(plans_file))
    configurations = [configuration] if configuration else plans_manager.available_configurations
    for name in configurations:
        folder = preprocessed / plans_manager.get_configuration(name).data_identifier
        if folder.is_dir() and any(folder.glob("*.pkl")):
            return folder
    raise FileNotFoundError(
        f"no preprocessed data for configuration(s) {', '.join(configurations)} of {plans_file}: run "
        "nnUNetv2_plan_and_preprocess (or nnUNetv2_preprocess) first"
    )
