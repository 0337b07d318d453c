"""GCT-UNet: GCT module semantics, 2D/3D shapes from plans, deep supervision, module placement, contract."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_ext.benchmark.presets import setting_from_preset
from nnunet_ext.networks.gct_unet import AttentionGate, GCTModule, GCTUNet
from nnunet_ext.trainers.gct_unet import nnUNetTrainerGCTUNet


@pytest.mark.parametrize(("conv_op", "shape"), [(nn.Conv2d, (2, 6, 9, 7)), (nn.Conv3d, (2, 6, 5, 8, 7))])
def test_gct_module_is_channel_gate_times_spatial_gate_plus_residual(conv_op, shape):
    torch.manual_seed(0)
    module = GCTModule(6, conv_op, spatial_kernel=3)
    x = torch.randn(*shape)
    spatial_dims = tuple(range(2, x.ndim))
    a_c = torch.sigmoid(x.mean(dim=spatial_dims) @ module.channel_gate.weight.T + module.channel_gate.bias)
    conv = F.conv2d if conv_op is nn.Conv2d else F.conv3d
    a_s = torch.sigmoid(conv(x, module.spatial_gate.weight, module.spatial_gate.bias, padding=1))
    expected = x * a_c.reshape(*a_c.shape, *[1] * len(spatial_dims)) * a_s + x
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected)
        gate_c, gate_s = module.gates(x)
    assert gate_s.shape == (shape[0], 1, *shape[2:])
    for gate in (gate_c, gate_s):
        assert gate.min() >= 0 and gate.max() <= 1


def test_gct_module_reduces_to_identity_when_a_gate_closes():
    module = GCTModule(4, nn.Conv2d)
    with torch.no_grad():
        module.channel_gate.bias.fill_(-1e4)
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(module(x), x)


def test_attention_gate_scales_the_skip_by_a_map_in_the_unit_interval():
    torch.manual_seed(0)
    gate = AttentionGate(8, nn.Conv2d)
    skip, g = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    out = gate(skip, g)
    ratio = out / skip
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)  # one map for all channels
    assert ratio.min() >= 0 and ratio.max() <= 1


def test_gct_modules_sit_after_every_encoder_stage_every_decoder_stage_and_on_every_skip():
    network = GCTUNet(1, 2, [4, 8, 16, 32], [3] * 4, [1, 2, 2, 2])
    assert len(network.encoder.gcts) == 4  # the last is the bottleneck's
    assert len(network.decoder.gcts) == len(network.decoder.skip_gcts) == len(network.decoder.skip_align) == 3
    assert sum(isinstance(m, GCTModule) for m in network.modules()) == 10


@pytest.mark.parametrize("attention_gate", [False, True])
def test_2d_deep_supervision_shapes_features_and_deepcopy(attention_gate):
    torch.manual_seed(0)
    network = GCTUNet(
        2, 3, [8, 16, 32, 64], [3] * 4, [1, 2, 2, 2], attention_gate=attention_gate, deep_supervision=True
    ).eval()
    x = torch.randn(2, 2, 32, 48)
    with torch.no_grad():
        skips = network.encoder(x)
        outputs, features = network.decoder(skips, return_features=True)
        clone = copy.deepcopy(network.decoder)
        clone.deep_supervision = False
        plain = clone(skips)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 32, 48), (2, 3, 16, 24), (2, 3, 8, 12)]
    assert features.shape == (2, 8, 32, 48)
    torch.testing.assert_close(outputs[0], plain)


def test_3d_anisotropic_plans_build_and_deep_supervision_scales_match_nnunet():
    setting = setting_from_preset("3d_aniso")
    network = nnUNetTrainerGCTUNet.build_network_architecture(
        setting.plans_manager, setting.configuration_manager, 1, 2, True
    )
    strides = setting.configuration_manager.pool_op_kernel_sizes
    assert len(network.encoder.stages) == len(strides)
    assert network.encoder.gcts[0].spatial_gate.weight.ndim == 5
    assert len(network.deep_supervision_scales) == len(strides) - 1
    small = GCTUNet(1, 2, [4, 8, 16], [3, 3, 3], [1, (1, 2, 2), 2], conv_op=nn.Conv3d, deep_supervision=True)
    with torch.no_grad():
        outputs = small(torch.randn(1, 1, 8, 16, 16))
    assert [tuple(o.shape[2:]) for o in outputs] == [(8, 16, 16), (8, 8, 8)]
    assert small.deep_supervision_scales == [[1.0, 1.0, 1.0], [1.0, 0.5, 0.5]]


def test_2d_plans_topology_is_taken_from_the_plans():
    setting = setting_from_preset("2d_256")
    arch = setting.configuration_manager.network_arch_init_kwargs
    network = nnUNetTrainerGCTUNet.build_network_architecture(
        setting.plans_manager, setting.configuration_manager, 3, 2, False
    )
    assert [gct.channel_gate.in_features for gct in network.encoder.gcts] == list(arch["features_per_stage"])
    first_convs = [stage.convs[0].conv for stage in network.encoder.stages]
    assert [tuple(conv.stride) for conv in first_convs] == [tuple(s) for s in arch["strides"]]
    assert [tuple(conv.kernel_size) for conv in first_convs] == [tuple(k) for k in arch["kernel_sizes"]]
