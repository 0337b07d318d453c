"""nnUNetTrainerExtBase: deep-supervision scales from the network contract, else nnU-Net's from the plans."""

from __future__ import annotations

from types import SimpleNamespace

from torch import nn

from nnunet_ext.networks.cmunext import cmunext
from nnunet_ext.trainers.base import nnUNetTrainerExtBase


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
