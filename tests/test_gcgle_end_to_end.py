"""GCGLE-Net through the literal nnU-Net commands: 2d train (with an ImageNet-style encoder initialisation) and
predict; 3d_fullres refused at once with a message naming the supported configuration."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import torch
from nnunet_runs import SHORT_SCHEDULE
from PIL import Image

from nnunet_ext.networks.gcgle import GCGLENet
from nnunet_ext.trainers.gcgle import PRETRAINED_VARIABLE

TRAINER = "nnUNetTrainerGCGLE"
#: one short epoch: the 47 M-parameter network is slow on 2 CPU cores, and the run is about the CLI, not learning
ONE_EPOCH = {
    **SHORT_SCHEDULE,
    "nnUNet_ext_num_epochs": "1",
    "nnUNet_ext_num_iterations_per_epoch": "2",
    "nnUNet_ext_num_val_iterations_per_epoch": "1",
}


def test_2d_train_from_a_pretrained_encoder_and_predict(nnunet_environment, synthetic_2d, tmp_path):
    env, spec = nnunet_environment, synthetic_2d
    torch.manual_seed(0)
    encoder = GCGLENet(3, 1000).encoder.state_dict()
    checkpoint_file = tmp_path / "biformer_synthetic.pth"
    torch.save({"model": {**encoder, "head.weight": torch.zeros(1000, 768)}}, checkpoint_file)

    fold = env.train(spec.dataset_id, "2d", TRAINER, schedule={**ONE_EPOCH, PRETRAINED_VARIABLE: str(checkpoint_file)})
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER and checkpoint["current_epoch"] == 1
    weights = checkpoint["network_weights"]
    assert weights["encoder.downsample_layers.0.0.weight"].shape[1] == spec.num_channels
    assert {"decoder.seg_heads.0.weight", "decoder.seg_heads.3.weight"} <= set(weights)
    log = next(fold.glob("training_log_*.txt")).read_text()
    # every encoder tensor but the 3-channel stem kernel loads into the 1-channel network; the head is skipped
    assert f"{len(encoder) - 1} tensors loaded, 2 checkpoint tensors skipped" in log
    assert (fold / "validation" / "summary.json").is_file()

    predictions = env.predict(spec, "2d", TRAINER, tmp_path / "pred")
    for index in range(spec.num_test):
        predicted = np.array(Image.open(predictions / f"synth_ts_{index:03d}.png"))
        assert predicted.shape == spec.shape
        assert set(np.unique(predicted)) <= {0, 1, 2, 3}


def test_3d_configuration_is_refused_at_once(nnunet_environment, synthetic_3d):
    env = nnunet_environment
    executable = shutil.which("nnUNetv2_train", path=os.path.dirname(sys.executable))
    result = subprocess.run(
        [executable, str(synthetic_3d.dataset_id), "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"],
        env=env.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "supports 2D configurations only ('2d')" in result.stderr
    assert "3d_fullres, 3d_lowres" in result.stderr
    results = env.results / synthetic_3d.folder_name / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"
    assert not (results / "checkpoint_final.pth").exists()
