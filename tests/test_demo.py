"""nnUNetv2_ext_demo runs end to end (on a tiny schedule here) and never clears a folder it did not create."""

from __future__ import annotations

import re

import pytest

from nnunet_ext.cli.demo import MARKER, dice_table, prepare_workdir
from nnunet_ext.data.synthetic import LABELS


def test_demo_command_prints_a_per_class_dice_table(nnunet_environment, tmp_path):
    workdir = tmp_path / "demo"
    output = nnunet_environment.run(
        "nnUNetv2_ext_demo",
        "--workdir",
        str(workdir),
        "--epochs",
        "1",
        "--iterations",
        "2",
        "--val-iterations",
        "1",
        "--num-training",
        "6",
        "--num-test",
        "2",
        "--size",
        "64",
        "--device",
        "cpu",
    )
    rows = re.findall(r"^\| (disc|box|ring|foreground mean)\b.*\| ([0-9.]+) \| ([0-9.]+) \|$", output, re.MULTILINE)
    assert [row[0] for row in rows] == ["disc", "box", "ring", "foreground mean"]
    assert all(0.0 <= float(dice) <= 1.0 for _, dice, _ in rows)
    assert len(list((workdir / "predictions").glob("*.png"))) == 2
    assert (workdir / "raw" / "Dataset990_Demo" / "dataset.json").is_file()


def test_demo_on_the_mni152_tissue_slices(nnunet_environment, tmp_path):
    """``--dataset mni152``: the real template's slices, its 14 test slices predicted and scored per tissue."""
    workdir = tmp_path / "demo_mni152"
    schedule = ["--epochs", "1", "--iterations", "2", "--val-iterations", "1"]
    arguments = ["--workdir", str(workdir), "--dataset", "mni152", "-d", "991", *schedule, "--device", "cpu"]
    output = nnunet_environment.run("nnUNetv2_ext_demo", *arguments)
    rows = re.findall(r"^\| (grey_matter|white_matter|foreground mean)\b.*\| ([0-9.]+) \| ([0-9.]+) \|$", output, re.M)
    assert [row[0] for row in rows] == ["grey_matter", "white_matter", "foreground mean"]
    assert "on 14 held-out mni152 cases" in output
    assert len(list((workdir / "predictions").glob("*.nii.gz"))) == 14
    assert (workdir / "raw" / "Dataset991_DemoMNI152" / "slices.csv").is_file()


def test_demo_refuses_to_clear_a_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="not a demo folder"):
        prepare_workdir(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_demo_recreates_its_own_folder(tmp_path):
    environment = prepare_workdir(tmp_path / "demo")
    (tmp_path / "demo" / "raw" / "old").mkdir()
    assert prepare_workdir(tmp_path / "demo") == environment
    assert not (tmp_path / "demo" / "raw" / "old").exists()
    assert (tmp_path / "demo" / MARKER).is_file()


def test_dice_table_names_the_classes():
    summary = {
        "mean": {"2": {"Dice": 0.5, "IoU": 0.33}, "1": {"Dice": 0.75, "IoU": 0.6}},
        "foreground_mean": {"Dice": 0.625, "IoU": 0.465},
    }
    assert dice_table(summary, LABELS).splitlines()[2:] == [
        "| disc (1) | 0.750 | 0.600 |",
        "| box (2) | 0.500 | 0.330 |",
        "| foreground mean | 0.625 | 0.465 |",
    ]
