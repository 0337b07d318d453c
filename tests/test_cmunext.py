"""CMUNeXt network: reference parameter/FLOP counts, shapes in 2D/3D, deep supervision, plans mapping."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nnunet_ext.networks.cmunext import CMUNEXT_VARIANTS, CMUNeXt, SkipFusion, cmunext


def count_parameters(network: CMUNeXt) -> int:
    return sum(p.numel() for p in network.parameters()) - network.deep_supervision_head_parameters()


@pytest.mark.parametrize(
    ("variant", "num_classes", "input_channels", "expected"),
    [
        ("cmunext", 1, 3, 3_149_185),
        ("cmunext_s", 1, 3, 417_505),
        ("cmunext_l", 1, 3, 8_286_721),
        ("cmunext", 9, 3, 3_149_321),
        ("cmunext_s", 4, 3, 417_532),
        ("cmunext_l", 2, 3, 8_286_754),
        ("cmunext", 1, 1, 3_148_897),
        ("cmunext_s", 1, 1, 417_361),
        ("cmunext_l", 1, 1, 8_286_145),
    ],
)
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_parameter_count_equals_the_reference(variant, num_classes, input_channels, expected, deep_supervision):
    network = cmunext(variant, input_channels, num_classes, deep_supervision=deep_supervision)
    assert count_parameters(network) == expected


@pytest.mark.parametrize(
    ("variant", "reference_flops"),
    [("cmunext", 14_463_352_832), ("cmunext_s", 2_025_816_064), ("cmunext_l", 33_711_063_040)],
)
def test_flops_at_256_match_the_reference_within_one_percent(variant, reference_flops):
    network = cmunext(variant, 3, 2).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(torch.zeros(1, 3, 256, 256))
    assert abs(counter.get_total_flops() - reference_flops) <= 0.01 * reference_flops


@pytest.mark.parametrize("variant", sorted(CMUNEXT_VARIANTS))
@pytest.mark.parametrize("shape", [(64, 64), (96, 160), (48, 80)])
def test_2d_output_has_input_size_for_square_and_rectangular_patches(variant, shape):
    network = cmunext(variant, 5, 7).eval()
    with torch.no_grad():
        out = network(torch.randn(2, 5, *shape))
    assert out.shape == (2, 7, *shape)


def test_deep_supervision_gives_one_output_per_decoder_level_at_the_declared_scales():
    network = cmunext("cmunext_s", 2, 3, deep_supervision=True).eval()
    with torch.no_grad():
        outputs = network(torch.randn(1, 2, 64, 96))
    assert [tuple(o.shape[2:]) for o in outputs] == [(64, 96), (32, 48), (16, 24), (8, 12)]
    assert network.deep_supervision_scales == [[1.0, 1.0], [0.5, 0.5], [0.25, 0.25], [0.125, 0.125]]
    network.decoder.deep_supervision = False
    with torch.no_grad():
        single = network(torch.randn(1, 2, 64, 96))
    assert isinstance(single, torch.Tensor) and single.shape == (1, 3, 64, 96)


def test_deep_supervision_final_output_equals_the_plain_output():
    torch.manual_seed(0)
    network = cmunext("cmunext_s", 1, 2, deep_supervision=True).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        highest = network(x)[0]
        network.decoder.deep_supervision = False
        plain = network(x)
    torch.testing.assert_close(highest, plain)


def test_weights_trained_with_deep_supervision_load_into_the_inference_network():
    trained = cmunext("cmunext", 1, 4, deep_supervision=True)
    inference = cmunext("cmunext", 1, 4, deep_supervision=False)
    inference.load_state_dict(trained.state_dict())


def test_3d_anisotropic_strides_with_rectangular_patch():
    strides = [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    network = cmunext("cmunext_s", 2, 3, conv_op=nn.Conv3d, strides=strides, deep_supervision=True).eval()
    assert isinstance(network.encoder.stages[1][0].fn[0], nn.Conv3d)
    assert network.encoder.stages[4][0].fn[0].kernel_size == (9, 9, 9)
    with torch.no_grad():
        outputs = network(torch.randn(1, 2, 8, 48, 32))
    assert [tuple(o.shape[2:]) for o in outputs] == [(8, 48, 32), (8, 24, 16), (8, 12, 8), (4, 6, 4)]
    assert network.deep_supervision_scales[3] == [0.5, 0.125, 0.125]


def test_fewer_stages_for_small_plans():
    network = cmunext("cmunext", 1, 2)
    small = CMUNeXt(1, 2, CMUNEXT_VARIANTS["cmunext"].truncated(3), strides=[2, 2])
    assert len(small.encoder.stages) == 3 and len(network.encoder.stages) == 5
    with torch.no_grad():
        assert small.eval()(torch.randn(1, 1, 20, 24)).shape == (1, 2, 20, 24)


def test_inconsistent_strides_are_rejected():
    with pytest.raises(ValueError, match="5 stages need 4 strides"):
        cmunext("cmunext", 1, 2, strides=[2, 2])
    with pytest.raises(ValueError, match="unknown CMUNeXt variant"):
        cmunext("cmunext_xl")


def test_backward_reaches_every_parameter():
    network = cmunext("cmunext_s", 1, 2, deep_supervision=True)
    sum(o.mean() for o in network(torch.randn(2, 1, 32, 32))).backward()
    assert all(p.grad is not None for p in network.parameters())


@pytest.mark.parametrize("conv_op, shape", [(nn.Conv2d, (10, 12)), (nn.Conv3d, (4, 6, 8))])
def test_skip_fusion_equals_the_official_grouped_convolution_of_the_concatenation(conv_op, shape):
    torch.manual_seed(0)
    fusion = SkipFusion(6, conv_op).double()  # float64: the two computations agree to rounding
    skip, up = (torch.randn(2, 6, *shape, dtype=torch.float64, requires_grad=True) for _ in range(2))
    official = nn.Sequential.forward(fusion, torch.cat((skip, up), dim=1))  # fusion_conv(cat(skip, up))
    official.square().sum().backward()
    expected_grads = [t.grad.clone() for t in (skip, up, fusion[0][0].weight, fusion[0][0].bias)]
    for t in (skip, up, fusion[0][0].weight, fusion[0][0].bias):
        t.grad = None
    ours = fusion(skip, up)
    ours.square().sum().backward()
    torch.testing.assert_close(ours, official)
    for grad, expected in zip((skip.grad, up.grad, fusion[0][0].weight.grad, fusion[0][0].bias.grad), expected_grads):
        torch.testing.assert_close(grad, expected)
