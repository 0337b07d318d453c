"""CMUNeXt through the literal nnU-Net commands: train (2d, 3d_fullres), continue (--c), predict, evaluate."""

from __future__ import annotations

import ast
import json

import numpy as np
import SimpleITK as sitk
import torch
from nnunet_runs import SHORT_SCHEDULE
from PIL import Image


def load_checkpoint(fold):
    return torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)


def test_2d_train_continue_predict_evaluate(nnunet_environment, synthetic_2d, tmp_path):
    env, spec, trainer = nnunet_environment, synthetic_2d, "nnUNetTrainerCMUNeXt"
    fold = env.train(spec.dataset_id, "2d", trainer)
    checkpoint = load_checkpoint(fold)
    assert checkpoint["trainer_name"] == trainer and checkpoint["current_epoch"] == 2
    assert "decoder.seg_heads.3.weight" in checkpoint["network_weights"]
    assert (fold / "validation" / "summary.json").is_file()
    # the results folder says how it was trained: the short-schedule variables in debug.json and the log
    recorded = ast.literal_eval(json.loads((fold / "debug.json").read_text())["schedule_overrides"])
    assert recorded == {"num_epochs": 2, "num_iterations_per_epoch": 4, "num_val_iterations_per_epoch": 2}
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "nnUNet_ext_num_epochs=2, nnUNet_ext_num_iterations_per_epoch=4" in log

    env.train(spec.dataset_id, "2d", trainer, "--c", schedule={**SHORT_SCHEDULE, "nnUNet_ext_num_epochs": "3"})
    continued = load_checkpoint(fold)
    assert continued["current_epoch"] == 3
    assert len(continued["logging"]["train_losses"]) == 3
    assert continued["logging"]["train_losses"][:2] == checkpoint["logging"]["train_losses"]

    predictions = env.predict(spec, "2d", trainer, tmp_path / "pred")
    for index in range(spec.num_test):
        predicted = np.array(Image.open(predictions / f"synth_ts_{index:03d}.png"))
        assert predicted.shape == spec.shape
        assert set(np.unique(predicted)) <= {0, 1, 2, 3}

    env.run(
        "nnUNetv2_evaluate_folder",
        str(env.raw / spec.folder_name / "labelsTs"),
        str(predictions),
        "-djfile",
        str(predictions / "dataset.json"),
        "-pfile",
        str(predictions / "plans.json"),
        "-np",
        "2",
    )
    summary = json.loads((predictions / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2", "3"}
    assert len(summary["metric_per_case"]) == spec.num_test


def test_3d_fullres_anisotropic_plans(nnunet_environment, synthetic_3d, tmp_path):
    env, spec, trainer = nnunet_environment, synthetic_3d, "nnUNetTrainerCMUNeXt_S"
    plans = json.loads((env.preprocessed / spec.folder_name / "nnUNetPlans.json").read_text())
    plan_strides = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["strides"]
    assert plan_strides[1][0] == 1, "the fixture must plan an anisotropic first pooling"

    fold = env.train(spec.dataset_id, "3d_fullres", trainer)
    weights = load_checkpoint(fold)["network_weights"]
    assert weights["encoder.stages.1.0.fn.0.weight"].shape == (8, 1, 3, 3, 3)

    predictions = env.predict(spec, "3d_fullres", trainer, tmp_path / "pred3d")
    for index in range(spec.num_test):
        predicted = sitk.ReadImage(str(predictions / f"synth_ts_{index:03d}.nii.gz"))
        assert sitk.GetArrayFromImage(predicted).shape == spec.shape
        assert predicted.GetSpacing() == tuple(reversed(spec.voxel_spacing))
