"""nnUNetTrainerExtBase: deep-supervision scales from the network contract, else nnU-Net's from the plans; checkpoints
that nnU-Net's loader reads."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_ext.benchmark.presets import BenchmarkPreset, BenchmarkSetting, plans_for_preset
from nnunet_ext.benchmark.trainer_step import initialised_trainer
from nnunet_ext.checkpoints import load_training_checkpoint
from nnunet_ext.networks.cmunext import cmunext
from nnunet_ext.trainers.base import nnUNetTrainerExtBase
from nnunet_ext.trainers.cmunext import nnUNetTrainerCMUNeXt, nnUNetTrainerCMUNeXt_S
from nnunet_ext.trainers.guidednet import nnUNetTrainerGuidedNet_CMUNeXt
from nnunet_ext.trainers.semi_supervised import CHECKPOINT_KEY, nnUNetTrainerSemiSupervisedBase


def bare_trainer(network: nn.Module, deep_supervision: bool = True) -> nnUNetTrainerExtBase:
    trainer = object.__new__(nnUNetTrainerExtBase)
    trainer.network = network
    trainer.enable_deep_supervision = deep_supervision
    trainer.configuration_manager = SimpleNamespace(pool_op_kernel_sizes=[[1, 1], [2, 2], [2, 2], [2, 1]])
    return trainer


def test_scales_come_from_a_contract_network():
    network = cmunext("cmunext_s", 1, 2, strides=[(2, 2), (2, 2), (1, 2), (2, 2)])
    assert bare_trainer(network)._get_deep_supervision_scales() == network.deep_supervision_scales
    assert network.deep_supervision_scales[3] == [0.25, 0.125]


def test_networks_without_the_contract_get_nnunets_scales():
    scales = bare_trainer(nn.Conv2d(1, 1, 1))._get_deep_supervision_scales()
    assert [list(map(float, s)) for s in scales] == [[1.0, 1.0], [0.5, 0.5], [0.25, 0.25]]


def test_no_scales_without_deep_supervision():
    assert bare_trainer(cmunext("cmunext_s", 1, 2), deep_supervision=False)._get_deep_supervision_scales() is None


TINY = BenchmarkSetting("tiny", plans_for_preset("tiny", BenchmarkPreset((32, 32), 4, 1, 3)), "tiny", 4, 1, 3)


@pytest.mark.parametrize("trainer_class", [nnUNetTrainerCMUNeXt_S, nnUNetTrainerGuidedNet_CMUNeXt])
def test_save_checkpoint_writes_the_keys_nnunets_loader_expects(trainer_class, tmp_path):
    trainer = initialised_trainer(trainer_class, TINY, torch.device("cpu"))
    trainer.save_checkpoint(str(tmp_path / "ours.pth"))
    nnUNetTrainer.save_checkpoint(trainer, str(tmp_path / "stock.pth"))
    ours, stock = (load_training_checkpoint(tmp_path / name) for name in ("ours.pth", "stock.pth"))
    semi_supervised = issubclass(trainer_class, nnUNetTrainerSemiSupervisedBase)
    assert set(ours) - set(stock) == ({CHECKPOINT_KEY} if semi_supervised else set())
    assert set(stock) <= set(ours)
    assert ours["trainer_name"] == stock["trainer_name"] == trainer_class.__name__
    assert ours["network_weights"].keys() == stock["network_weights"].keys()
    assert all(torch.equal(ours["network_weights"][k], v) for k, v in stock["network_weights"].items())

    # nnU-Net's own loader reads our file; ours also takes a loaded dict (nnunetv2 2.8.1's does not)
    def restored_by(load) -> dict[str, torch.Tensor]:
        torch.manual_seed(1)
        fresh = initialised_trainer(trainer_class, TINY, torch.device("cpu"))
        load(fresh)
        return fresh.unwrapped_network.state_dict()

    for restored in (
        restored_by(lambda fresh: nnUNetTrainer.load_checkpoint(fresh, str(tmp_path / "ours.pth"))),
        restored_by(lambda fresh: fresh.load_checkpoint(ours)),
    ):
        assert all(torch.equal(restored[k], v) for k, v in ours["network_weights"].items())


def test_a_checkpoint_without_scheme_state_is_refused_naming_the_file(tmp_path):
    supervised = initialised_trainer(nnUNetTrainerCMUNeXt, TINY, torch.device("cpu"))
    supervised.save_checkpoint(str(tmp_path / "supervised.pth"))
    scheme = initialised_trainer(nnUNetTrainerGuidedNet_CMUNeXt, TINY, torch.device("cpu"))
    with pytest.raises(RuntimeError, match=r"supervised\.pth.*semi_supervised_state"):
        scheme.load_checkpoint(str(tmp_path / "supervised.pth"))
