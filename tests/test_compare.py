"""nnUNetv2_ext_compare on two fake nnU-Net results folders (no training): nnU-Net's summary.json columns, the
extended metrics computed against gt_segmentations, their cache, and the report files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from nnunetv2.evaluation.evaluate_predictions import save_summary_json
from test_evaluation import write_volume

from nnunet_ext.evaluation import crossval
from nnunet_ext.evaluation.crossval import cache_file, compare_trainers
from nnunet_ext.evaluation.learning_curves import read_learning_curve
from nnunet_ext.evaluation.reports import LEARNING_CURVES_PNG, write_comparison_report

LABELS = {"background": 0, "liver": 1, "spleen": 2}
FOLDS = {0: ["case_0", "case_1"], 1: ["case_2", "case_3"]}
SPACING = (2.0, 1.0, 1.0)
# Dice foreground means written into the fake summary.json files: (fold 0, fold 1)
NNUNET_DICE = {"nnUNetTrainerPerfect": (0.9, 0.8), "nnUNetTrainerShifted": (0.7, 0.5)}


def reference_volume() -> np.ndarray:
    volume = np.zeros((10, 16, 16), np.uint8)
    volume[2:8, 3:9, 3:9] = 1
    volume[2:5, 11:14, 11:14] = 2
    return volume


def shifted_prediction() -> np.ndarray:
    """Liver moved 1 voxel (1 mm) along y: liver Dice 5/6 and HD95 1 mm; spleen exact."""
    reference = reference_volume()
    prediction = np.where(reference == 1, 0, reference)
    prediction[np.roll(reference == 1, 1, axis=1)] = 1
    return prediction


def nnunet_summary(fold_dice: float, cases: list[str]) -> dict:
    """A summary.json as nnU-Net's compute_metrics_on_folder writes it (keys are labels)."""
    metrics = {1: {"Dice": fold_dice, "IoU": 0.5}, 2: {"Dice": fold_dice, "IoU": 0.5}}
    per_case = [{"reference_file": f"{c}.nii.gz", "prediction_file": f"{c}.nii.gz", "metrics": metrics} for c in cases]
    mean = {label: {"Dice": fold_dice, "IoU": 0.5} for label in (1, 2)}
    return {"metric_per_case": per_case, "mean": mean, "foreground_mean": {"Dice": fold_dice, "IoU": 0.5}}


def make_results(results_root, preprocessed_root, dataset="Dataset979_FakeCompare", configuration="3d_fullres"):
    """Two trained-model folders with two validated folds each, and the dataset's gt_segmentations."""
    gt_folder = preprocessed_root / dataset / "gt_segmentations"
    gt_folder.mkdir(parents=True)
    for cases in FOLDS.values():
        for case in cases:
            write_volume(gt_folder / f"{case}.nii.gz", reference_volume(), SPACING)
    folders = {}
    for trainer, fold_dice in NNUNET_DICE.items():
        folder = results_root / dataset / f"{trainer}__nnUNetPlans__{configuration}"
        folder.mkdir(parents=True)
        (folder / "dataset.json").write_text(json.dumps({"labels": LABELS, "file_ending": ".nii.gz"}))
        plans = {"dataset_name": dataset, "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO"}
        (folder / "plans.json").write_text(json.dumps({**plans, "label_manager": "LabelManager", "configurations": {}}))
        for fold, cases in FOLDS.items():
            validation = folder / f"fold_{fold}" / "validation"
            validation.mkdir(parents=True)
            prediction = reference_volume() if trainer.endswith("Perfect") else shifted_prediction()
            for case in cases:
                write_volume(validation / f"{case}.nii.gz", prediction, SPACING)
            save_summary_json(nnunet_summary(fold_dice[fold], cases), str(validation / "summary.json"))
        folders[trainer] = folder
    return folders, gt_folder


def test_compare_collects_summary_json_and_extended_metrics(tmp_path):
    folders, gt_folder = make_results(tmp_path / "results", tmp_path / "preprocessed")
    summaries, columns, header = compare_trainers(folders, gt_folder, "nnunet", ["dice", "hd95"])
    assert [c.label for c in columns] == ["Dice (nnU-Net)", "IoU (nnU-Net)", "Dice", "HD95"]
    assert header["classes"] == {"1": "liver", "2": "spleen"} and header["unit"] == "mm"
    perfect, shifted = summaries
    assert perfect.folds == shifted.folds == [0, 1] and perfect.num_cases == 4
    assert perfect.fold_means["Dice (nnU-Net)"] == {0: 0.9, 1: 0.8}
    assert shifted.fold_means["Dice (nnU-Net)"] == {0: 0.7, 1: 0.5}
    assert perfect.fold_means["Dice"] == {0: 1.0, 1: 1.0}
    assert shifted.fold_means["Dice"] == pytest.approx({0: (5 / 6 + 1) / 2, 1: (5 / 6 + 1) / 2})
    assert shifted.class_means["Dice"] == pytest.approx({"1": 5 / 6, "2": 1.0})
    assert shifted.class_means["HD95"] == pytest.approx({"1": 1.0, "2": 0.0})
    assert perfect.case_values["HD95"] == [0.0] * 4
    for folder in folders.values():
        for fold in FOLDS:
            assert cache_file(folder / f"fold_{fold}" / "validation", "nnunet").is_file()
    # by default the nnunet protocol's Dice and IoU, nnU-Net's own, are read from summary.json only
    _, default_columns, _ = compare_trainers(folders, gt_folder, "nnunet", None)
    assert [c.label for c in default_columns] == ["Dice (nnU-Net)", "IoU (nnU-Net)", "HD95", "ASSD", "NSD"]

    header = {"dataset": "Dataset979", "configuration": "3d_fullres", "plans": "nnUNetPlans", **header}
    output = write_comparison_report(summaries, columns, header, tmp_path / "out")
    markdown = (output / "compare.md").read_text()
    best, tie = "**0.8500 ± 0.0500**", "**0.5000 ± 0.0000**"
    assert f"| nnUNetTrainerPerfect | 0,1 | 4 | {best} | {tie} | **1.0000 ± 0.0000** | **0.00 ± 0.00** |" in markdown
    assert f"| nnUNetTrainerShifted | 0,1 | 4 | 0.6000 ± 0.1000 | {tie} | 0.9167 ± 0.0000 | 0.50 ± 0.00 |" in markdown
    assert "## HD95 (mm) per class (mean over folds)" in markdown
    assert "| nnUNetTrainerShifted | 1.00 | 0.00 |" in markdown
    with open(output / "compare.csv") as handle:
        rows = list(csv.DictReader(handle))
    fold_rows = [r for r in rows if r["class"] == "foreground_mean" and r["metric"] == "Dice (nnU-Net)"]
    assert [(r["trainer"], r["fold"], float(r["value"])) for r in fold_rows] == [
        ("nnUNetTrainerPerfect", "0", 0.9),
        ("nnUNetTrainerPerfect", "1", 0.8),
        ("nnUNetTrainerShifted", "0", 0.7),
        ("nnUNetTrainerShifted", "1", 0.5),
    ]
    compared = json.loads((output / "compare.json").read_text())
    assert compared["trainers"]["nnUNetTrainerShifted"]["mean"]["Dice (nnU-Net)"] == pytest.approx(0.6)
    assert (output / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_extended_metrics_are_cached_until_predictions_or_settings_change(tmp_path, monkeypatch):
    folders, gt_folder = make_results(tmp_path / "results", tmp_path / "preprocessed")
    shifted = {"nnUNetTrainerShifted": folders["nnUNetTrainerShifted"]}
    compare_trainers(shifted, gt_folder, "nnunet", ["dice"])

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    with monkeypatch.context() as patch:
        patch.setattr(crossval, "evaluate_folder", no_evaluation)
        summaries, _, _ = compare_trainers(shifted, gt_folder, "nnunet", ["dice"])
        assert summaries[0].fold_means["Dice"][0] == pytest.approx((5 / 6 + 1) / 2)
        with pytest.raises(AssertionError, match="cache"):
            compare_trainers(shifted, gt_folder, "nnunet", ["dice", "iou"])  # other metrics
        with pytest.raises(AssertionError, match="cache"):
            compare_trainers(shifted, gt_folder, "nnunet", ["dice"], recompute=True)
    # a prediction replaced after the cache was written: fold 0 is scored again
    validation = shifted["nnUNetTrainerShifted"] / "fold_0" / "validation"
    write_volume(validation / "case_0.nii.gz", reference_volume(), SPACING)
    summaries, _, _ = compare_trainers(shifted, gt_folder, "nnunet", ["dice"])
    assert summaries[0].fold_means["Dice"][0] == pytest.approx((1 + (5 / 6 + 1) / 2) / 2)


def nnunet_logging(epochs: int, start: float, epoch_seconds: list[float]) -> dict:
    """nnU-Net's logger state (``nnUNetLogger.get_checkpoint()``) after ``epochs`` epochs of the given durations."""
    ends = start + np.cumsum(epoch_seconds)
    return {
        "mean_fg_dice": [0.1 * (e + 1) for e in range(epochs)],
        "ema_fg_dice": [0.05 * (e + 1) for e in range(epochs)],
        "dice_per_class_or_region": [[0.1, 0.2]] * epochs,
        "train_losses": [1.0 / (e + 1) for e in range(epochs)],
        "val_losses": [1.5 / (e + 1) for e in range(epochs)],
        "lrs": [0.01] * epochs,
        "epoch_start_timestamps": [start, *ends[:-1]],
        "epoch_end_timestamps": list(ends),
    }


def test_learning_curves_come_from_the_checkpoints_logging(tmp_path):
    folders, gt_folder = make_results(tmp_path / "results", tmp_path / "preprocessed")
    perfect = folders["nnUNetTrainerPerfect"]
    durations = [30.0, 10.0, 12.0, 11.0]  # the first epoch slowed (compilation): the median leaves it out
    torch.save({"logging": nnunet_logging(4, 1000.0, durations)}, perfect / "fold_0" / "checkpoint_final.pth")
    (perfect / "fold_0" / "debug.json").write_text(json.dumps({"num_iterations_per_epoch": "5"}))
    torch.save({"logging": nnunet_logging(2, 50.0, [20.0, 20.0])}, perfect / "fold_1" / "checkpoint_latest.pth")

    curve = read_learning_curve(perfect / "fold_0")
    assert curve.checkpoint == "checkpoint_final.pth" and curve.epochs == 4 and curve.iterations_per_epoch == 5
    assert curve.pseudo_dice == pytest.approx([0.1, 0.2, 0.3, 0.4]) and curve.val_loss[1] == 0.75
    assert curve.elapsed_seconds == [30.0, 40.0, 52.0, 63.0] and curve.training_seconds == 63.0
    assert curve.seconds_per_iteration == pytest.approx(11.5 / 5) and curve.best_ema_pseudo_dice == pytest.approx(0.2)
    latest = read_learning_curve(perfect / "fold_1")
    assert latest.checkpoint == "checkpoint_latest.pth" and latest.iterations_per_epoch == 250
    assert read_learning_curve(folders["nnUNetTrainerShifted"] / "fold_0") is None

    summaries, columns, header = compare_trainers(folders, gt_folder, "nnunet", ["dice"])
    assert set(summaries[0].curves) == {0, 1} and summaries[1].curves == {}
    header = {"dataset": "Dataset979", "configuration": "3d_fullres", "plans": "nnUNetPlans", **header}
    output = write_comparison_report(summaries, columns, header, tmp_path / "out")
    markdown = (output / "compare.md").read_text()
    seconds_per_iteration = (11.5 / 5 + 20.0 / 250) / 2
    training_minutes = (63.0 + 40.0) / 2 / 60
    timing = f"{seconds_per_iteration:.3f} | {training_minutes:.1f} min"
    assert f"| nnUNetTrainerPerfect | 0,1 | 3 | {timing} | 0.1500 | 0.3000 |" in markdown
    assert "| nnUNetTrainerShifted | - | no checkpoint |" in markdown
    compared = json.loads((output / "compare.json").read_text())["trainers"]
    assert compared["nnUNetTrainerPerfect"]["learning_curves"]["0"]["elapsed_seconds"] == [30.0, 40.0, 52.0, 63.0]
    assert compared["nnUNetTrainerShifted"]["learning_curves"] == {}
    assert (output / LEARNING_CURVES_PNG).read_bytes()[:4] == b"\x89PNG"


def test_no_learning_curves_without_checkpoints(tmp_path):
    folders, gt_folder = make_results(tmp_path / "results", tmp_path / "preprocessed")
    summaries, columns, header = compare_trainers(folders, gt_folder, "nnunet", ["dice"])
    header = {"dataset": "Dataset979", "configuration": "3d_fullres", "plans": "nnUNetPlans", **header}
    output = write_comparison_report(summaries, columns, header, tmp_path / "out")
    assert not (output / LEARNING_CURVES_PNG).exists() and "## Training" not in (output / "compare.md").read_text()


def test_compare_rejects_missing_folds_and_results(tmp_path):
    folders, gt_folder = make_results(tmp_path / "results", tmp_path / "preprocessed")
    with pytest.raises(FileNotFoundError, match=r"fold\(s\) 3 .*folds with results: 0, 1"):
        compare_trainers(folders, gt_folder, "nnunet", ["dice"], folds=[0, 3])
    with pytest.raises(FileNotFoundError, match=r"plans\.json not found"):
        compare_trainers({"nnUNetTrainerMissing": tmp_path / "nowhere"}, gt_folder, "nnunet", ["dice"])


def test_compare_console_script(nnunet_environment):
    make_results(nnunet_environment.results, nnunet_environment.preprocessed)
    arguments = ["-d", "979", "-c", "3d_fullres", "-tr", *NNUNET_DICE, "-np", "0", "--metrics", "dice,assd"]
    output = nnunet_environment.run("nnUNetv2_ext_compare", *arguments)
    report = nnunet_environment.results / "Dataset979_FakeCompare" / "ext_compare__nnUNetPlans__3d_fullres"
    assert "| nnUNetTrainerPerfect | 0,1 | 4 |" in output
    compared = json.loads((report / "compare.json").read_text())
    assert compared["columns"] == ["Dice (nnU-Net)", "IoU (nnU-Net)", "Dice", "ASSD"]
    assert compared["trainers"]["nnUNetTrainerPerfect"]["mean"]["ASSD"] == 0.0
    assert compared["trainers"]["nnUNetTrainerShifted"]["mean"]["ASSD"] > 0.0
