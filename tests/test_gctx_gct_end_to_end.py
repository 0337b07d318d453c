"""GCtx-UNet and GCT-UNet through the literal nnU-Net commands (shortened schedule): train, predict.

GCT-UNet in 3D (anisotropic plans) is covered by tests/test_gct_unet.py at network level; a 3D CLI run is left out
to keep the suite's time on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from nnunet_runs import SHORT_SCHEDULE
from PIL import Image


def load_checkpoint(fold):
    return torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)


def assert_predictions_2d(predictions, spec):
    for index in range(spec.num_test):
        predicted = np.array(Image.open(predictions / f"synth_ts_{index:03d}.png"))
        assert predicted.shape == spec.shape
        assert set(np.unique(predicted)) <= {0, 1, 2, 3}


def test_gctx_unet_2d_train_and_predict(nnunet_environment, synthetic_2d, tmp_path):
    env, spec, trainer = nnunet_environment, synthetic_2d, "nnUNetTrainerGCTxUNet"
    fold = env.train(spec.dataset_id, "2d", trainer)
    checkpoint = load_checkpoint(fold)
    assert checkpoint["trainer_name"] == trainer and checkpoint["current_epoch"] == 2
    weights = checkpoint["network_weights"]
    assert weights["encoder.levels.0.blocks.0.mlp.fc1.weight"].shape == (256, 64)  # mlp_ratio 4
    assert "decoder.seg_heads.3.weight" in weights and "decoder.seg_heads.3.bias" not in weights
    assert "betas" in checkpoint["optimizer_state"]["param_groups"][0]  # AdamW, not SGD
    assert checkpoint["optimizer_state"]["param_groups"][0]["weight_decay"] == 1e-4
    assert (fold / "validation" / "summary.json").is_file()
    assert_predictions_2d(env.predict(spec, "2d", trainer, tmp_path / "pred"), spec)


def test_gct_unet_2d_train_and_predict(nnunet_environment, synthetic_2d, tmp_path):
    env, spec, trainer = nnunet_environment, synthetic_2d, "nnUNetTrainerGCTUNet"
    fold = env.train(spec.dataset_id, "2d", trainer)
    checkpoint = load_checkpoint(fold)
    assert checkpoint["trainer_name"] == trainer and checkpoint["current_epoch"] == 2
    assert checkpoint["network_weights"]["encoder.gcts.0.spatial_gate.weight"].ndim == 4
    assert "momentum" in checkpoint["optimizer_state"]["param_groups"][0]  # nnU-Net's SGD
    assert_predictions_2d(env.predict(spec, "2d", trainer, tmp_path / "pred2d"), spec)


def test_compare_draws_learning_curves_of_two_real_runs(nnunet_environment, synthetic_2d, tmp_path):
    """``nnUNetv2_ext_compare`` on the two short runs above: its curves are the logging in their checkpoints."""
    env, spec = nnunet_environment, synthetic_2d
    folds = {t: env.trained(spec.dataset_id, "2d", t) for t in ("nnUNetTrainerGCTxUNet", "nnUNetTrainerGCTUNet")}
    output = tmp_path / "compare"
    env.run(
        "nnUNetv2_ext_compare", "-d", str(spec.dataset_id), "-c", "2d", "-tr", *folds, "-np", "0", "-o", str(output)
    )
    compared = json.loads((output / "compare.json").read_text())["trainers"]
    markdown = (output / "compare.md").read_text()
    for trainer, fold in folds.items():
        logging = load_checkpoint(fold)["logging"]
        curve = compared[trainer]["learning_curves"]["0"]
        assert curve["epochs"] == int(SHORT_SCHEDULE["nnUNet_ext_num_epochs"])
        assert curve["iterations_per_epoch"] == int(SHORT_SCHEDULE["nnUNet_ext_num_iterations_per_epoch"])
        assert curve["pseudo_dice"] == pytest.approx(logging["mean_fg_dice"])
        assert curve["train_loss"] == pytest.approx(logging["train_losses"])
        assert curve["val_loss"] == pytest.approx(logging["val_losses"])
        elapsed = np.subtract(logging["epoch_end_timestamps"], logging["epoch_start_timestamps"][0])
        assert curve["elapsed_seconds"] == pytest.approx(elapsed)
        assert f"| {trainer} | 0 | 2 |" in markdown
    assert (output / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_gctx_unet_3d_configuration_stops_at_once_with_a_clear_message(nnunet_environment, synthetic_3d):
    env = nnunet_environment
    executable = shutil.which("nnUNetv2_train", path=os.path.dirname(sys.executable))
    command = [executable, str(synthetic_3d.dataset_id), "3d_fullres", "0", "-tr", "nnUNetTrainerGCTxUNet"]
    result = subprocess.run(
        [*command, "-device", "cpu"], env={**env.env, **SHORT_SCHEDULE}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "GCtx-UNet is a 2D network" in result.stderr and "3D patch" in result.stderr
    assert "Epoch 0" not in result.stdout
