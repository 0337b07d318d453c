"""nnUNetv2_ext_demo runs end to end (on a tiny schedule here) and never clears a folder it did not create."""

from __future__ import annotations

import re

import pytest

from nnunet_ext.cli.demo import MARKER, dice_table, prepare_workdir


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
    assert dice_table(summary).splitlines()[2:] == [
        "| disc (1) | 0.750 | 0.600 |",
        "| box (2) | 0.500 | 0.330 |",
        "| foreground mean | 0.625 | 0.465 |",
    ]
