"""The supervised-only baselines train on the fold's labeled subset of splits_ssl.json, through the literal commands."""

from __future__ import annotations

import json

import pytest
import torch
from nnunetv2.run.run_training import get_trainer_from_args

from nnunet_ext.registration import TRAINERS

LABELED_ONLY_DATASET_ID = 968
NO_SPLIT_DATASET_ID = 969


@pytest.fixture(scope="module")
def split_dataset(nnunet_environment, synthetic_2d, copy_prepared_dataset):
    spec = copy_prepared_dataset(synthetic_2d, LABELED_ONLY_DATASET_ID)
    nnunet_environment.run("nnUNetv2_ext_ssl_split", "-d", str(spec.dataset_id), "--labeled-count", "3")
    folder = nnunet_environment.preprocessed / spec.folder_name
    return (
        spec,
        json.loads((folder / "splits_ssl.json").read_text()),
        json.loads((folder / "splits_final.json").read_text()),
    )


def test_every_architecture_has_a_registered_baseline():
    baselines = sorted(name for name in TRAINERS if name.startswith("nnUNetTrainerLabeledOnly"))
    architectures = ["", "_CMUNeXt", "_GCGLE", "_GCTUNet", "_GCTxUNet"]
    assert baselines == [f"nnUNetTrainerLabeledOnly{architecture}" for architecture in architectures]


@pytest.mark.parametrize("fold", [0, 3])
def test_split_is_the_folds_labeled_subset_with_nnunets_validation_cases(split_dataset, nnunet_paths, fold):
    spec, ssl, splits = split_dataset
    trainer = get_trainer_from_args(str(spec.dataset_id), "2d", fold, "nnUNetTrainerLabeledOnly_CMUNeXt",
                                    device=torch.device("cpu"))  # fmt: skip
    train_keys, val_keys = trainer.do_split()
    assert sorted(train_keys) == sorted(ssl["folds"][fold]["labeled"]) and len(train_keys) == 3
    assert sorted(val_keys) == sorted(splits[fold]["val"])
    assert set(ssl["folds"][fold]["unlabeled"]).isdisjoint(train_keys)


def test_without_an_ssl_split_training_stops_and_says_what_to_run(synthetic_2d, copy_prepared_dataset, nnunet_paths):
    spec = copy_prepared_dataset(synthetic_2d, NO_SPLIT_DATASET_ID)
    trainer = get_trainer_from_args(str(spec.dataset_id), "2d", 0, "nnUNetTrainerLabeledOnly",
                                    device=torch.device("cpu"))  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"splits_ssl\.json, which does not exist; run nnUNetv2_ext_ssl_split"):
        trainer.do_split()


def test_nnunet_train_on_the_labeled_subset_with_the_shortened_schedule(nnunet_environment, split_dataset):
    spec, ssl, _ = split_dataset
    fold = nnunet_environment.train(spec.dataset_id, "2d", "nnUNetTrainerLabeledOnly")
    log = next(fold.glob("training_log_*.txt")).read_text()
    unlabeled = len(ssl["folds"][0]["unlabeled"])
    assert f"splits_ssl.json: 3 labeled and {unlabeled} label-less training cases in fold 0" in log
    assert "Schedule shortened from the environment" in log and (fold / "checkpoint_final.pth").is_file()
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == "nnUNetTrainerLabeledOnly" and checkpoint["current_epoch"] == 2
