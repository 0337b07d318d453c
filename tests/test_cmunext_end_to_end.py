"""CMUNeXt through the literal nnU-Net commands: train (2d, 3d_fullres), continue (--c), predict, evaluate."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
import torch
from conftest import SHORT_SCHEDULE
from PIL import Image

TRAINER = "nnUNetTrainerCMUNeXt"


def model_folder(environment, spec, trainer, configuration):
    return environment.results / spec.folder_name / f"{trainer}__nnUNetPlans__{configuration}"


def test_2d_train_continue_predict_evaluate(nnunet_environment, synthetic_2d, tmp_path):
    env, spec = nnunet_environment, synthetic_2d
    env.run(
        "nnUNetv2_train", str(spec.dataset_id), "2d", "0", "-tr", TRAINER, "-device", "cpu", extra_env=SHORT_SCHEDULE
    )
    fold = model_folder(env, spec, TRAINER, "2d") / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER and checkpoint["current_epoch"] == 2
    assert "decoder.seg_heads.3.weight" in checkpoint["network_weights"]
    assert (fold / "validation" / "summary.json").is_file()

    longer = {**SHORT_SCHEDULE, "nnUNet_ext_num_epochs": "3"}
    env.run(
        "nnUNetv2_train", str(spec.dataset_id), "2d", "0", "-tr", TRAINER, "-device", "cpu", "--c", extra_env=longer
    )
    continued = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert continued["current_epoch"] == 3
    assert len(continued["logging"]["train_losses"]) == 3
    assert continued["logging"]["train_losses"][:2] == checkpoint["logging"]["train_losses"]

    predictions = tmp_path / "pred"
    env.run(
        "nnUNetv2_predict",
        "-i",
        str(env.raw / spec.folder_name / "imagesTs"),
        "-o",
        str(predictions),
        "-d",
        str(spec.dataset_id),
        "-c",
        "2d",
        "-tr",
        TRAINER,
        "-f",
        "0",
        "-device",
        "cpu",
        "-npp",
        "0",
        "-nps",
        "0",
    )
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
    env, spec = nnunet_environment, synthetic_3d
    plans = json.loads((env.preprocessed / spec.folder_name / "nnUNetPlans.json").read_text())
    plan_strides = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["strides"]
    assert plan_strides[1][0] == 1, "the fixture must plan an anisotropic first pooling"

    trainer = "nnUNetTrainerCMUNeXt_S"
    env.run(
        "nnUNetv2_train",
        str(spec.dataset_id),
        "3d_fullres",
        "0",
        "-tr",
        trainer,
        "-device",
        "cpu",
        extra_env=SHORT_SCHEDULE,
    )
    fold = model_folder(env, spec, trainer, "3d_fullres") / "fold_0"
    weights = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    assert weights["encoder.stages.1.0.fn.0.weight"].shape == (8, 1, 3, 3, 3)

    predictions = tmp_path / "pred3d"
    env.run(
        "nnUNetv2_predict",
        "-i",
        str(env.raw / spec.folder_name / "imagesTs"),
        "-o",
        str(predictions),
        "-d",
        str(spec.dataset_id),
        "-c",
        "3d_fullres",
        "-tr",
        trainer,
        "-f",
        "0",
        "-device",
        "cpu",
        "-npp",
        "0",
        "-nps",
        "0",
    )
    for index in range(spec.num_test):
        predicted = sitk.ReadImage(str(predictions / f"synth_ts_{index:03d}.nii.gz"))
        assert sitk.GetArrayFromImage(predicted).shape == spec.shape
        assert predicted.GetSpacing() == tuple(reversed(spec.voxel_spacing))
