"""GuidedNet through the literal nnU-Net commands on an ssl split: train, continue (--c), predict (one network and
the average of both), in 2d (plans' U-Net) and 3d_fullres (CMUNeXt combination)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
from nnunet_runs import SHORT_SCHEDULE
from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
from PIL import Image

from nnunet_ext.trainers.guidednet import AVERAGE_CHECKPOINT
from nnunet_ext.trainers.semi_supervised import CHECKPOINT_KEY

GUIDEDNET_2D_DATASET_ID = 971
GUIDEDNET_3D_DATASET_ID = 972
TERMS = ("supervised1", "supervised2", "gmm1", "gmm2", "gmm_u1", "gmm_u2", "cgmm_consistency", "ktcps")


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def predict_average(env, spec, configuration, trainer, output):
    """``nnUNetv2_predict ... -chk checkpoint_final_average.pth``: both networks' probabilities averaged."""
    env.run(
        "nnUNetv2_predict", "-i", str(env.raw / spec.folder_name / "imagesTs"), "-o", str(output),
        "-d", str(spec.dataset_id), "-c", configuration, "-tr", trainer, "-f", "0", "-chk", AVERAGE_CHECKPOINT,
        "-device", "cpu", "-npp", "0", "-nps", "0",
    )  # fmt: skip
    return output


def ssl_dataset(env, copy_prepared_dataset, spec, dataset_id):
    copied = copy_prepared_dataset(spec, dataset_id)
    env.run("nnUNetv2_ext_ssl_split", "-d", str(dataset_id), "--labeled-fraction", "0.5", "--seed", "0")
    return copied


def assert_resume_restores_the_training_state(dataset_id: int, trainer_name: str, saved: dict) -> None:
    """In-process ``--c`` loading: both networks, both optimizers, network 2's schedule, the class weights and the
    ramp-up position (global iteration) are those of the checkpoint."""
    trainer = get_trainer_from_args(str(dataset_id), "2d", 0, trainer_name, continue_training=True,
                                    device=torch.device("cpu"))  # fmt: skip
    maybe_load_checkpoint(trainer, continue_training=True, validation_only=False)
    state = saved[CHECKPOINT_KEY]
    assert trainer.current_epoch == 2 and trainer.global_iteration == state["global_iteration"] == 8
    torch.testing.assert_close(trainer.network.state_dict(), saved["network_weights"])
    torch.testing.assert_close(trainer.network2.state_dict(), state["networks"]["network2"])
    torch.testing.assert_close(trainer.ktcps_weights.weights, state["attributes"]["ktcps_weights"]["weights"])
    optimizers = {"network": (trainer.optimizer, saved["optimizer_state"]),
                  "network2": (trainer._extra_optimizers["network2"], state["optimizers"]["network2"])}  # fmt: skip
    for optimizer, saved_optimizer in optimizers.values():
        restored = optimizer.state_dict()["state"]
        assert restored.keys() == saved_optimizer["state"].keys() and restored
        for index, entry in saved_optimizer["state"].items():
            torch.testing.assert_close(restored[index]["momentum_buffer"], entry["momentum_buffer"])
    assert trainer._extra_lr_schedulers["network2"].state_dict() == state["lr_schedulers"]["network2"]


def test_2d_train_continue_predict(nnunet_environment, nnunet_paths, synthetic_2d, copy_prepared_dataset, tmp_path):
    env, trainer = nnunet_environment, "nnUNetTrainerGuidedNet"
    spec = ssl_dataset(env, copy_prepared_dataset, synthetic_2d, GUIDEDNET_2D_DATASET_ID)
    fold = env.train(spec.dataset_id, "2d", trainer)
    checkpoint = load(fold / "checkpoint_final.pth")
    state = checkpoint[CHECKPOINT_KEY]
    # the exported network is network 1 alone (nnU-Net's PlainConvUNet keys), network 2 only in the training state
    assert not any(key.startswith("partner.") for key in checkpoint["network_weights"])
    assert set(state["networks"]["network2"]) == set(checkpoint["network_weights"])
    assert state["global_iteration"] == 8 and set(state["optimizers"]) == {"network2"}
    weights = state["attributes"]["ktcps_weights"]["weights"]
    assert weights.shape == (2, 4) and weights[:, 0].abs().max() < 0.05 and (weights[:, 1:] > 0).all()
    for term in TERMS:
        assert np.isfinite(checkpoint["logging"][f"train_loss_{term}"]).all()

    assert_resume_restores_the_training_state(spec.dataset_id, trainer, checkpoint)
    env.train(spec.dataset_id, "2d", trainer, "--c", schedule={**SHORT_SCHEDULE, "nnUNet_ext_num_epochs": "3"})
    continued = load(fold / "checkpoint_final.pth")
    assert continued["current_epoch"] == 3 and continued[CHECKPOINT_KEY]["global_iteration"] == 12
    assert continued["logging"]["train_losses"][:2] == checkpoint["logging"]["train_losses"]
    assert not torch.equal(continued[CHECKPOINT_KEY]["attributes"]["ktcps_weights"]["weights"], weights)

    average = load(fold / AVERAGE_CHECKPOINT)
    assert CHECKPOINT_KEY not in average and "optimizer_state" not in average
    partner = {k[len("partner.") :]: v for k, v in average["network_weights"].items() if k.startswith("partner.")}
    torch.testing.assert_close(partner, continued[CHECKPOINT_KEY]["networks"]["network2"])

    one = env.predict(spec, "2d", trainer, tmp_path / "one")
    both = predict_average(env, spec, "2d", trainer, tmp_path / "both")
    for index in range(spec.num_test):
        for folder in (one, both):
            predicted = np.array(Image.open(folder / f"synth_ts_{index:03d}.png"))
            assert predicted.shape == spec.shape and set(np.unique(predicted)) <= {0, 1, 2, 3}


def test_3d_fullres_cmunext_combination(nnunet_environment, synthetic_3d, copy_prepared_dataset, tmp_path):
    env, trainer = nnunet_environment, "nnUNetTrainerGuidedNet_CMUNeXt"
    spec = ssl_dataset(env, copy_prepared_dataset, synthetic_3d, GUIDEDNET_3D_DATASET_ID)
    fold = env.train(spec.dataset_id, "3d_fullres", trainer)
    checkpoint = load(fold / "checkpoint_final.pth")
    assert checkpoint["network_weights"]["encoder.stages.1.0.fn.0.weight"].shape == (16, 1, 3, 3, 3)
    log = "".join(path.read_text() for path in fold.glob("training_log_*.txt"))
    assert "train_loss_gmm_u1" in log and "train_loss_ktcps" in log

    predictions = env.predict(spec, "3d_fullres", trainer, tmp_path / "pred3d")
    for index in range(spec.num_test):
        predicted = sitk.ReadImage(str(predictions / f"synth_ts_{index:03d}.nii.gz"))
        assert sitk.GetArrayFromImage(predicted).shape == spec.shape
