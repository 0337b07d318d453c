"""The CMUNeXt trainers build their network from nnU-Net plans: strides, dimensionality, stage count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnunet_ext.benchmark.presets import setting_from_preset
from nnunet_ext.trainers.cmunext import build_cmunext, nnUNetTrainerCMUNeXt, nnUNetTrainerCMUNeXt_L


@pytest.mark.parametrize("preset", ["2d_256", "3d_aniso"])
def test_network_follows_the_plans(preset):
    setting = setting_from_preset(preset)
    cm = setting.configuration_manager
    network = nnUNetTrainerCMUNeXt.build_network_architecture(setting.plans_manager, cm, 2, 4, True)
    expected_conv = nn.Conv2d if len(cm.patch_size) == 2 else nn.Conv3d
    assert isinstance(network.encoder.stem[0], expected_conv)
    assert [tuple(p.kernel_size) for p in network.encoder.pools] == [tuple(s) for s in cm.pool_op_kernel_sizes[1:5]]
    with torch.no_grad():
        outputs = network.eval()(torch.zeros(1, 2, *cm.patch_size))
    assert len(outputs) == len(network.deep_supervision_scales) == 4
    for output, scale in zip(outputs, network.deep_supervision_scales):
        assert list(output.shape[2:]) == [round(p * s) for p, s in zip(cm.patch_size, scale)]


def test_plans_with_few_stages_give_a_shallower_network():
    setting = setting_from_preset("2d_256")
    cm = setting.configuration_manager
    cm.configuration["architecture"]["arch_kwargs"]["strides"] = [[1, 1], [2, 2], [2, 2]]
    network = build_cmunext("cmunext", setting.plans_manager, cm, 1, 2, False)
    assert len(network.encoder.stages) == 3


def test_variants_differ_only_in_width_and_depth():
    setting = setting_from_preset("2d_256")
    large = nnUNetTrainerCMUNeXt_L.build_network_architecture(
        setting.plans_manager, setting.configuration_manager, 3, 1, False
    )
    assert sum(p.numel() for p in large.parameters()) - large.deep_supervision_head_parameters() == 8_286_721
