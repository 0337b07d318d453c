"""MGCC through the literal commands: ``nnUNetv2_ext_ssl_split`` + ``nnUNetv2_ext_preprocess_unlabeled`` +
``nnUNetv2_train ... -tr nnUNetTrainerMGCC`` + ``nnUNetv2_predict``; resume restores the ramp position."""

from __future__ import annotations

import json

import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
import numpy as np
import pytest
import torch
from nnunet_runs import SHORT_SCHEDULE
from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
from PIL import Image

import nnunet_ext.trainers.mgcc as mgcc_trainers
from nnunet_ext.data.synthetic import synthesize_case
from nnunet_ext.ssl.mgcc_loss import consistency_weight
from nnunet_ext.ssl.ramps import ramped_weight
from nnunet_ext.trainers.semi_supervised import CHECKPOINT_KEY

MGCC_DATASET_ID = 973
TRAINER = "nnUNetTrainerMGCC"
#: the published network (122 M parameters) is slow on a CPU: 2 epochs of 3 iterations, batch 1 + 1, 64^2 patches
SCHEDULE = {
    **SHORT_SCHEDULE,
    "nnUNet_ext_num_iterations_per_epoch": "3",
    "nnUNet_ext_num_val_iterations_per_epoch": "1",
}


def fast_ramp(iteration: int) -> float:
    """A ramp that moves every iteration, so that the restored iteration counter shows in the logged weight."""
    return ramped_weight(7.0, iteration, 20, iterations_per_step=1)


@pytest.fixture(scope="module")
def mgcc_dataset(synthetic_2d, copy_prepared_dataset, nnunet_environment):
    """Copy of the 2D dataset with patch 64^2 and batch size 2 (1 labeled + 1 unlabeled), 2 imagesUl cases, a 50 %
    ssl split."""
    env = nnunet_environment
    spec = copy_prepared_dataset(synthetic_2d, MGCC_DATASET_ID)
    plans_file = env.preprocessed / spec.folder_name / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["2d"].update(batch_size=2, patch_size=[64, 64])
    plans_file.write_text(json.dumps(plans, indent=4))
    unlabeled = env.raw / spec.folder_name / "imagesUl"
    unlabeled.mkdir()
    for index in range(2):
        image, _ = synthesize_case(spec.shape, (1.0, 1.0), 1, np.random.default_rng(200 + index))
        Image.fromarray(np.round(image[0] * 255).astype(np.uint8)).save(unlabeled / f"ul_{index}_0000.png")
    env.run("nnUNetv2_ext_ssl_split", "-d", str(MGCC_DATASET_ID), "--labeled-fraction", "0.5", "--seed", "0")
    env.run("nnUNetv2_ext_preprocess_unlabeled", "-d", str(MGCC_DATASET_ID), "-c", "2d", "-np", "0")
    return spec


def test_ssl_split_preprocess_train_predict(mgcc_dataset, nnunet_environment, tmp_path):
    env, spec = nnunet_environment, mgcc_dataset
    fold = env.train(MGCC_DATASET_ID, "2d", TRAINER, schedule=SCHEDULE)

    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER and checkpoint[CHECKPOINT_KEY]["global_iteration"] == 6
    weights = checkpoint["network_weights"]
    assert weights["global_context.2.0.fn.0.weight"].shape == (1024, 1, 7, 7)
    assert {key.split(".")[1] for key in weights if key.startswith("aux_decoders.")} == {"0", "1", "2"}
    logged = checkpoint["logging"]
    assert logged["train_loss_consistency_weight"] == pytest.approx([consistency_weight(0)] * 2)
    assert all(np.isfinite(logged["train_loss_supervised"])) and all(np.isfinite(logged["train_loss_consistency"]))
    log = "".join(path.read_text() for path in fold.glob("training_log_*.txt"))
    ssl_fold = json.loads((env.preprocessed / spec.folder_name / "splits_ssl.json").read_text())["folds"][0]
    pool = f"({len(ssl_fold['unlabeled'])} split, 2 real, 0 synthetic); per step 1 labeled + 1 unlabeled"
    assert len(ssl_fold["labeled"]) == len(ssl_fold["unlabeled"]) > 0 and pool in log
    assert (fold / "validation" / "summary.json").is_file() and (fold / "progress_ssl.png").is_file()

    predictions = tmp_path / "pred"
    env.run("nnUNetv2_predict", "-i", str(env.raw / spec.folder_name / "imagesTs"), "-o", str(predictions),
            "-d", str(MGCC_DATASET_ID), "-c", "2d", "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "0",
            "-nps", "0", "--disable_tta")  # fmt: skip
    for index in range(spec.num_test):
        predicted = np.array(Image.open(predictions / f"synth_ts_{index:03d}.png"))
        assert predicted.shape == spec.shape and set(np.unique(predicted)) <= {0, 1, 2, 3}


def test_resume_continues_the_ramp_from_the_saved_iteration(mgcc_dataset, nnunet_paths, monkeypatch):
    fold = nnunet_paths.results / mgcc_dataset.folder_name / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"
    for name, value in SCHEDULE.items():
        monkeypatch.setenv(name, value)
    if not (fold / "checkpoint_final.pth").is_file():
        nnunet_paths.train(MGCC_DATASET_ID, "2d", TRAINER, schedule=SCHEDULE)
    monkeypatch.setattr(nnunet_trainer_module, "default_num_processes", 1)
    monkeypatch.setattr(mgcc_trainers, "consistency_weight", fast_ramp)

    trainer = get_trainer_from_args(str(MGCC_DATASET_ID), "2d", 0, TRAINER, continue_training=True,
                                    device=torch.device("cpu"))  # fmt: skip
    maybe_load_checkpoint(trainer, continue_training=True, validation_only=False)
    assert trainer.current_epoch == 2 and trainer.global_iteration == 6
    trainer.num_epochs = 3
    trainer.run_training()

    resumed = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert resumed[CHECKPOINT_KEY]["global_iteration"] == 9
    ramp = resumed["logging"]["train_loss_consistency_weight"]
    assert len(ramp) == 3 and ramp[2] == pytest.approx(np.mean([fast_ramp(i) for i in range(6, 9)]))
