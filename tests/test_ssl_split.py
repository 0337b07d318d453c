"""Semi-supervised splits: per-fold invariants, class coverage, determinism by seed, CLI and the trainer checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from nnunetv2.utilities.crossval_split import generate_crossval_split
from PIL import Image

from nnunet_ext.cli import ssl_split
from nnunet_ext.ssl.splits import (
    SplitMismatchError,
    labeled_count_for,
    load_ssl_fold,
    make_ssl_splits,
    select_labeled,
)

SPLIT_DATASET_ID = 976
CASES = [f"case_{i:02d}" for i in range(23)]


def random_presence(seed: int = 0) -> dict[str, frozenset]:
    """Classes 1, 2 in most cases, 3 in a few, 4 in one case only."""
    rng = np.random.default_rng(seed)
    presence = {case: frozenset(c for c in (1, 2) if rng.random() < 0.8) for case in CASES}
    for case in rng.choice(CASES, 4, replace=False):
        presence[case] |= {3}
    presence[CASES[5]] |= {4}
    return presence


@pytest.mark.parametrize(
    ("n", "fraction", "count", "expected"),
    [
        (16, 0.25, None, 4),
        (13, 0.1, None, 1),
        (5, 0.5, None, 3),
        (4, 0.01, None, 1),
        (9, 1.0, None, 9),
        (9, None, 9, 9),
    ],
)
def test_labeled_count(n, fraction, count, expected):
    assert labeled_count_for(n, fraction, count) == expected


@pytest.mark.parametrize(
    ("fraction", "count", "message"),
    [(None, None, "exactly one"), (0.5, 2, "exactly one"), (0.0, None, r"\(0, 1\]"), (1.5, None, r"\(0, 1\]"),
     (None, 0, "not within 1..10"), (None, 11, "not within 1..10")],
)  # fmt: skip
def test_invalid_labeled_amounts_are_rejected(fraction, count, message):
    with pytest.raises(ValueError, match=message):
        labeled_count_for(10, fraction, count)


def test_split_invariants_in_every_fold():
    splits_final = generate_crossval_split(CASES, seed=12345, n_splits=5)
    presence = random_presence()
    content, _ = make_ssl_splits(splits_final, presence, labeled_fraction=0.25, seed=3)
    assert content["seed"] == 3 and content["labeled_fraction"] == 0.25 and len(content["folds"]) == 5
    for split, fold in zip(splits_final, content["folds"]):
        labeled, unlabeled, val = set(fold["labeled"]), set(fold["unlabeled"]), set(fold["val"])
        assert not labeled & unlabeled
        assert labeled | unlabeled == set(split["train"])
        assert val == set(split["val"]) and not val & (labeled | unlabeled)
        assert len(labeled) == math.floor(0.25 * len(split["train"]) + 0.5)  # half up: 4.5 -> 5
        fold_classes = set().union(*(presence[c] for c in split["train"]))
        assert set().union(*(presence[c] for c in labeled)) == fold_classes


def test_same_seed_same_split_other_seed_other_split():
    splits_final = generate_crossval_split(CASES, seed=12345, n_splits=5)
    presence = random_presence()
    first, _ = make_ssl_splits(splits_final, presence, labeled_count=6, seed=7)
    again, _ = make_ssl_splits(splits_final, presence, labeled_count=6, seed=7)
    other, _ = make_ssl_splits(splits_final, presence, labeled_count=6, seed=8)
    assert first == again
    assert [f["labeled"] for f in first["folds"]] != [f["labeled"] for f in other["folds"]]


def test_folds_are_drawn_independently():
    splits_final = [{"train": CASES, "val": []}, {"train": CASES, "val": []}]
    content, _ = make_ssl_splits(splits_final, {case: frozenset() for case in CASES}, labeled_count=5, seed=0)
    assert content["folds"][0]["labeled"] != content["folds"][1]["labeled"]


def test_smaller_labeled_subsets_are_nested_in_larger_ones():
    presence = random_presence(1)
    subsets = [select_labeled(CASES, presence, count, np.random.default_rng([4, 0]))[0] for count in (3, 6, 12)]
    assert set(subsets[0]) < set(subsets[1]) < set(subsets[2])


def test_a_class_seen_in_one_case_only_is_always_labeled():
    presence = {case: frozenset({1}) for case in CASES}
    presence["case_17"] = frozenset({1, 2})
    for seed in range(10):
        labeled, uncovered = select_labeled(CASES, presence, 1, np.random.default_rng(seed))
        assert labeled == ["case_17"] and not uncovered


def test_warnings_name_classes_that_cannot_be_covered_or_are_absent():
    presence = {case: frozenset({i % 4}) for i, case in enumerate(CASES)}
    presence["case_00"] = frozenset({0, 9})
    splits_final = [
        {"train": [c for c in CASES if c != "case_00"], "val": ["case_00"]},
        {"train": CASES[:12], "val": CASES[12:]},
    ]
    content, warnings = make_ssl_splits(splits_final, presence, labeled_count=2, seed=0)
    assert len(content["folds"][0]["labeled"]) == 2
    assert "fold 0: 2 labeled case(s) cannot show every class; missing" in warnings[0]
    assert warnings[1] == "fold 0: class(es) 9 appear in no training case of this fold"
    assert warnings[2].startswith("fold 1: 2 labeled case(s) cannot show every class")
    assert len(warnings) == 3


# ------------------------------------------------------------------------------------------- on a real dataset
@pytest.fixture(scope="module")
def split_dataset(synthetic_2d, copy_prepared_dataset, nnunet_environment):
    spec = copy_prepared_dataset(synthetic_2d, SPLIT_DATASET_ID)
    (nnunet_environment.preprocessed / spec.folder_name / "splits_final.json").unlink(missing_ok=True)
    return spec


def test_cli_creates_nnunets_splits_and_a_split_covering_the_labels(split_dataset, nnunet_environment):
    output = nnunet_environment.run("nnUNetv2_ext_ssl_split", "-d", str(SPLIT_DATASET_ID), "--labeled-fraction", "0.3")
    preprocessed = nnunet_environment.preprocessed / split_dataset.folder_name
    identifiers = sorted(p.name[: -len(".png")] for p in (preprocessed / "gt_segmentations").glob("*.png"))
    splits_final = json.loads((preprocessed / "splits_final.json").read_text())
    assert splits_final == generate_crossval_split(identifiers, seed=12345, n_splits=5)
    content = json.loads((preprocessed / "splits_ssl.json").read_text())
    assert content["created_by"] == "nnUNetv2_ext_ssl_split" and content["seed"] == 0
    for fold, (split, entry) in enumerate(zip(splits_final, content["folds"])):
        assert f"fold {fold}: {len(entry['labeled'])} labeled, {len(entry['unlabeled'])} unlabeled" in output
        assert sorted(entry["labeled"] + entry["unlabeled"]) == sorted(split["train"])
        assert len(entry["labeled"]) == math.floor(0.3 * len(split["train"]) + 0.5)
        labels = set().union(*(np.unique(Image.open(preprocessed / "gt_segmentations" / f"{case}.png"))
                               for case in entry["labeled"]))  # fmt: skip
        assert labels == {0, 1, 2, 3}


def test_existing_split_is_kept_unless_overwritten(split_dataset, nnunet_paths):
    path = nnunet_paths.preprocessed / split_dataset.folder_name / "splits_ssl.json"
    ssl_split.main(["-d", str(SPLIT_DATASET_ID), "--labeled-count", "2", "--overwrite"])
    before = path.read_text()
    with pytest.raises(SystemExit) as exit_status:
        ssl_split.main(["-d", str(SPLIT_DATASET_ID), "--labeled-count", "5"])
    assert "splits_ssl.json exists; pass --overwrite" in str(exit_status.value)
    assert path.read_text() == before
    ssl_split.main(["-d", str(SPLIT_DATASET_ID), "--labeled-count", "5", "--overwrite"])
    assert all(len(fold["labeled"]) == 5 for fold in json.loads(path.read_text())["folds"])
    with pytest.raises(SystemExit) as exit_status:
        ssl_split.main(["-d", str(SPLIT_DATASET_ID), "--labeled-count", "50", "--overwrite"])
    assert "labeled count 50 is not within 1..1" in str(exit_status.value)


def test_trainer_side_checks_of_the_split_file(split_dataset, nnunet_paths):
    preprocessed = nnunet_paths.preprocessed / split_dataset.folder_name
    ssl_split.main(["-d", str(SPLIT_DATASET_ID), "--labeled-count", "3", "--overwrite"])
    split = json.loads((preprocessed / "splits_final.json").read_text())[1]
    fold = load_ssl_fold(preprocessed, 1, split["train"], split["val"])
    assert len(fold.labeled) == 3 and sorted(fold.labeled + fold.unlabeled) == sorted(split["train"])
    with pytest.raises(SplitMismatchError, match="fold 'all' has no labeled subset"):
        load_ssl_fold(preprocessed, "all", split["train"], split["val"])
    with pytest.raises(SplitMismatchError, match="fold 5 has no labeled subset"):
        load_ssl_fold(preprocessed, 5, split["train"], split["val"])
    with pytest.raises(SplitMismatchError, match=r"derived from another splits_final\.json"):
        load_ssl_fold(preprocessed, 1, split["train"][1:], [*split["val"], split["train"][0]])
    assert load_ssl_fold(preprocessed.parent / "elsewhere", 1, split["train"], split["val"]) is None


def test_missing_dataset_or_configuration_is_one_line_and_status_2(split_dataset, nnunet_paths, capsys):
    for arguments, named in ((["-d", "987"], "987"), (["-d", str(SPLIT_DATASET_ID), "-c", "3d_missing"], "3d_missing")):
        with pytest.raises(SystemExit) as exit_status:
            ssl_split.main([*arguments, "--labeled-count", "2", "--overwrite"])
        stderr = capsys.readouterr().err
        assert exit_status.value.code == 2, stderr
        assert stderr.startswith("nnUNetv2_ext_ssl_split: error: ") and named in stderr and "Traceback" not in stderr
