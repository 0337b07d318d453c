"""MGCC network, perturbations, losses and ramp-up: published structure and constants, golden loss values of the
official code, the generalisation to softmax labels, main-only inference, MGCC on another backbone (2D and 3D)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nnunet_ext.networks.mgcc as mgcc_module
from nnunet_ext.benchmark.presets import setting_from_preset
from nnunet_ext.networks.cmunext import cmunext
from nnunet_ext.networks.common import SegmentationDecoder, SegmentationNetwork
from nnunet_ext.networks.mgcc import (
    MGCCNetwork,
    dropout,
    feature_dropout,
    feature_noise,
    mgcc_from_backbones,
    mgcc_unet,
)
from nnunet_ext.registration import TRAINERS, find_registered_trainer
from nnunet_ext.ssl.mgcc_loss import MGCCObjective, MGCCSupervisedLoss, consistency_loss, consistency_weight
from nnunet_ext.trainers.mgcc import nnUNetTrainerMGCC, nnUNetTrainerMGCC_CMUNeXt

GOLDEN = Path(__file__).parent / "golden" / "mgcc_losses.pt"


def small_mgcc(input_channels: int = 2, num_classes: int = 3, conv_op=nn.Conv2d, deep_supervision=False):
    return mgcc_from_backbones(
        lambda: mgcc_unet(input_channels, num_classes, (4, 8, 8), conv_op, deep_supervision=deep_supervision),
        input_channels,
        (16,) * (2 if conv_op is nn.Conv2d else 3),
    )


# ------------------------------------------------------------------------------------------------ perturbations
def test_feature_dropout_drops_exactly_the_positions_above_a_per_sample_threshold_of_0_7_to_0_9_of_the_max():
    torch.manual_seed(0)
    np.random.seed(0)
    lows, highs = [], []
    for _ in range(200):
        x = torch.rand(3, 4, 6, 7) * torch.tensor([1.0, 5.0, 0.2]).view(3, 1, 1, 1)  # samples of different scale
        out = feature_dropout(x)
        attention = x.mean(1)
        kept = (out != 0).all(1)
        assert torch.equal((out == 0).all(1), ~kept)  # one mask for every channel of a position
        assert torch.equal(out[kept.unsqueeze(1).expand_as(x)], x[kept.unsqueeze(1).expand_as(x)])  # not rescaled
        ratios = attention.flatten(1) / attention.flatten(1).amax(1, keepdim=True)
        kept_flat = kept.flatten(1)
        # one threshold ratio u shared by the batch: max kept ratio < u <= min dropped ratio in every sample
        highest_kept = max(float(ratios[b][kept_flat[b]].max()) for b in range(3))
        lowest_dropped = min(float(ratios[b][~kept_flat[b]].min()) for b in range(3))
        assert highest_kept < lowest_dropped
        lows.append(lowest_dropped)
        highs.append(highest_kept)
    assert min(lows) >= 0.7 and max(highs) < 0.9
    assert min(lows) < 0.72 and max(highs) > 0.88  # the whole range (0.7, 0.9) is drawn


def test_feature_dropout_works_in_3d():
    x = torch.rand(2, 3, 4, 5, 6)
    out = feature_dropout(x)
    assert out.shape == x.shape and (out == 0).any() and (out != 0).any()


def test_dropout_is_always_active_drops_30_percent_and_rescales():
    torch.manual_seed(0)
    x = torch.ones(4, 8, 64, 64)
    out = dropout(x)
    assert (out == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert torch.allclose(out[out != 0], torch.full_like(out[out != 0], 1 / 0.7))


def test_feature_noise_is_multiplicative_bounded_shared_by_the_batch_and_fresh_per_call():
    torch.manual_seed(0)
    x = torch.rand(3, 4, 16, 16) + 0.5
    noise = (feature_noise(x) - x) / x
    assert noise.abs().max() <= 0.3 + 1e-6 and noise.abs().max() > 0.29
    assert noise.min() < -0.29 and noise.mean().abs() < 0.02  # uniform over (-0.3, 0.3)
    torch.testing.assert_close(noise[0], noise[1])
    torch.testing.assert_close(noise[0], noise[2])
    assert not torch.allclose((feature_noise(x) - x) / x, noise)


# ------------------------------------------------------------------------------------------------ network
def conv_block_parameters(c_in: int, c_out: int) -> int:
    return (9 * c_in + 1) * c_out + 2 * c_out + (9 * c_out + 1) * c_out + 2 * c_out


def published_parameter_count(input_channels: int, num_classes: int) -> int:
    """The official ``MGCC(img_ch, length=(3, 3, 3), k=7, dim_mult=4)`` counted from its layer formulas (with
    ``num_classes`` output channels instead of the fixed 1)."""
    dims = [64, 128, 256, 512, 1024]
    encoder = sum(conv_block_parameters(c_in, c_out) for c_in, c_out in zip([input_channels, *dims], dims))
    convmixer_layer = (49 + 1) * 1024 + 2 * 1024 + (1024 + 1) * 1024 + 2 * 1024
    msag = sum((k * c * c + c) + 2 * c for c in dims[:4] for k in (1, 9, 9)) + sum(
        3 * c * c + c + 2 * c for c in dims[:4]
    )
    decoder = msag + (dims[0] + 1) * num_classes
    for c_in, c_out in zip(dims[:0:-1], dims[-2::-1]):
        decoder += (9 * c_in + 1) * c_out + 2 * c_out + conv_block_parameters(2 * c_out, c_out)
    return encoder + 3 * 3 * convmixer_layer + 4 * decoder


@pytest.fixture(scope="module")
def published_network() -> MGCCNetwork:
    setting = setting_from_preset("2d_256", batch_size=1)
    plans, configuration = setting.plans_manager, setting.configuration_manager
    return nnUNetTrainerMGCC.build_network_architecture(plans, configuration, 3, 1, False)


def test_published_network_has_the_official_structure_and_parameter_count(published_network):
    network = published_network
    heads = sum(p.numel() for d in (network.decoder, *network.aux_decoders) for h in d.seg_heads[:-1]
                for p in h.parameters())  # fmt: skip
    assert sum(p.numel() for p in network.parameters()) - heads == published_parameter_count(3, 1)
    assert [block[0].fn[0].weight.shape for block in network.global_context] == [(1024, 1, 7, 7)] * 3
    assert [len(block) for block in network.global_context] == [6, 6, 6]  # 3 ConvMixer layers of 2 units each
    stage_channels = [stage[3].out_channels for stage in network.encoder.stages]
    assert stage_channels == [64, 128, 256, 512, 1024]


def test_eval_runs_only_the_main_path(published_network):
    network = published_network.eval()
    called = []
    for name, module in [("aux", d) for d in network.aux_decoders] + [("main", network.decoder)]:
        module.register_forward_hook(lambda *_, name=name: called.append(name))
    with torch.no_grad():
        out = network(torch.randn(1, 3, 64, 64))
    assert called == ["main"] and out.shape == (1, 1, 64, 64)


def test_training_forward_routes_global_context_levels_and_perturbs_every_skip(monkeypatch):
    network = small_mgcc().train()
    recorded: dict[str, list[torch.Tensor]] = {}
    shifts = tuple(lambda x, tag=tag: x + 1000 * tag for tag in (1, 2, 3))  # a perturbation that marks its level
    monkeypatch.setattr(mgcc_module, "AUX_PERTURBATIONS", shifts)
    for name, decoder in [("aux1", network.aux_decoders[0]), ("aux2", network.aux_decoders[1]),
                          ("aux3", network.aux_decoders[2]), ("main", network.decoder)]:  # fmt: skip
        decoder.register_forward_pre_hook(lambda _, args, name=name: recorded.setdefault(name, list(args[0])))
    blocks = []
    for block in network.global_context:
        block.register_forward_hook(lambda _, args, output: blocks.append((args[0], output)))
    x = torch.randn(2, 2, 16, 16)
    skips = network.encoder(x)
    outputs = network(x)

    assert len(outputs) == 4 and all(o.shape == (2, 3, 16, 16) for o in outputs)
    bottlenecks = [skips[-1], blocks[0][1], blocks[1][1], blocks[2][1]]
    for tag, name in enumerate(["aux1", "aux2", "aux3"], start=1):
        expected = [*skips[:-1], bottlenecks[tag - 1]]
        for got, want in zip(recorded[name], expected, strict=True):  # every level perturbed
            torch.testing.assert_close(got, want + 1000 * tag)
    for got, want in zip(recorded["main"], [*skips[:-1], bottlenecks[3]], strict=True):
        torch.testing.assert_close(got, want)  # the main decoder sees unperturbed features


def test_deep_supervision_applies_to_the_main_decoder_only():
    network = small_mgcc(deep_supervision=True).train()
    main, *aux = network(torch.randn(2, 2, 16, 16))
    assert [m.shape[-1] for m in main] == [16, 8] and all(a.shape == (2, 3, 16, 16) for a in aux)
    assert network.deep_supervision_scales == [[1.0, 1.0], [0.5, 0.5]]


def test_auxiliary_decoders_have_their_own_initialisation():
    network = small_mgcc()
    weights = [d.convs[0][0].weight for d in (network.decoder, *network.aux_decoders)]
    assert all(not torch.equal(weights[0], w) for w in weights[1:])
    assert all(w.shape == weights[0].shape for w in weights)


def test_a_decoder_holding_the_encoder_is_refused():
    class Holding(SegmentationDecoder):
        def __init__(self, encoder):
            super().__init__(nn.ModuleList([nn.Conv2d(4, 2, 1)]), [[1.0, 1.0]], False)
            self.encoder = encoder

        def decode_levels(self, skips):
            return [skips[0]]

    encoder = nn.Conv2d(1, 4, 1)
    with pytest.raises(ValueError, match="holds the encoder"):
        MGCCNetwork(SegmentationNetwork(encoder, Holding(encoder)), [Holding(encoder) for _ in range(3)], 4)


@pytest.mark.parametrize(("shape", "conv_op"), [((32, 48), nn.Conv2d), ((16, 16, 16), nn.Conv3d)])
def test_mgcc_on_cmunext_in_2d_and_3d(shape, conv_op):
    build = lambda: cmunext("cmunext_s", 2, 4, conv_op=conv_op)  # noqa: E731
    network = mgcc_from_backbones(build, 2, shape)
    assert [b[0].fn[0].weight.shape[0] for b in network.global_context] == [128] * 3  # CMUNeXt-S bottleneck
    assert type(network.aux_decoders[0]).__name__ == "CMUNeXtDecoder"
    outputs = network.train()(torch.randn(2, 2, *shape))
    assert len(outputs) == 4 and all(o.shape == (2, 4, *shape) for o in outputs)
    assert network.eval()(torch.randn(1, 2, *shape)).shape == (1, 4, *shape)


def test_cmunext_combination_trainer_builds_from_the_supervised_trainer_for_3d_plans():
    setting = setting_from_preset("3d_aniso", batch_size=1)
    network = nnUNetTrainerMGCC_CMUNeXt.build_network_architecture(
        setting.plans_manager, setting.configuration_manager, 1, 3, True
    )
    assert type(network.encoder).__name__ == "CMUNeXtEncoder" and isinstance(network.global_context[0][0].fn[0],
                                                                               nn.Conv3d)  # fmt: skip
    assert network.decoder.deep_supervision and not any(d.deep_supervision for d in network.aux_decoders)


# ------------------------------------------------------------------------------------------------ losses
@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(GOLDEN, weights_only=False)


GOLDEN_ITERATIONS = (0, 7500, 20000, 40000)


def test_consistency_weight_reproduces_the_official_values(golden):
    for iteration in GOLDEN_ITERATIONS:
        assert consistency_weight(iteration) == pytest.approx(golden[f"weight_at_{iteration}"], rel=1e-12)
    assert consistency_weight(0) == pytest.approx(7 * math.exp(-5))
    assert consistency_weight(149) == consistency_weight(0) < consistency_weight(150)
    assert consistency_weight(30_000) == 7.0 and consistency_weight(29_999) < 7.0


def golden_case(golden, regions: bool):
    inputs = golden["inputs"]
    logits = [inputs["logits_main"], *inputs["logits_aux"]]
    label = inputs["label"]
    labeled = inputs["labeled_bs"]
    if regions:
        return logits, label[:labeled], labeled
    # a two-class softmax with logits (0, z) is the binary sigmoid of z
    two_class = [torch.cat([torch.zeros_like(z), z], dim=1) for z in logits]
    return two_class, label[:labeled].round().long(), labeled


@pytest.mark.parametrize("regions", [True, False], ids=["sigmoid", "softmax"])
def test_binary_case_reproduces_the_official_mgcc_losses(golden, regions):
    logits, target, labeled = golden_case(golden, regions)
    objective = MGCCObjective(regions)
    for iteration in GOLDEN_ITERATIONS:
        total, terms = objective(logits, target, labeled, consistency_weight(iteration))
        torch.testing.assert_close(terms["supervised"], golden["supervised"].float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(terms["consistency"], golden["consistency"].float(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(total, golden[f"total_at_{iteration}"].float(), rtol=1e-5, atol=1e-6)


def naive_supervised(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """0.5 CE + 1 - mean over samples and foreground classes of the soft Dice, by loops."""
    batch, classes = logits.shape[:2]
    probabilities = torch.softmax(logits.double(), 1)
    ce = -torch.log(probabilities.gather(1, labels.long())).mean()
    dices = []
    for b in range(batch):
        for c in range(1, classes):
            p, g = probabilities[b, c], (labels[b, 0] == c).double()
            dices.append((2 * (p * g).sum() + 1e-5) / (p.sum() + g.sum() + 1e-5))
    return float(0.5 * ce + 1 - sum(dices) / len(dices))


def test_multi_class_supervised_loss_and_consistency_match_naive_computations():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 8, 6)
    labels = torch.randint(0, 4, (3, 1, 8, 6))
    assert float(MGCCSupervisedLoss(False)(logits, labels)) == pytest.approx(naive_supervised(logits, labels), 1e-5)
    aux = [torch.randn(3, 4, 8, 6) for _ in range(3)]
    expected = np.mean([((logits.softmax(1) - a.softmax(1)) ** 2).mean().item() for a in aux])
    assert float(consistency_loss(logits, aux, regions=False)) == pytest.approx(expected, rel=1e-5)


def test_objective_uses_labeled_half_with_deep_supervision_and_unlabeled_half_for_consistency():
    torch.manual_seed(0)
    labeled = 2
    main = [torch.randn(5, 3, 8, 8), torch.randn(5, 3, 4, 4)]
    aux = [torch.randn(5, 3, 8, 8) for _ in range(3)]
    target = [torch.randint(0, 3, (labeled, 1, 8, 8)), torch.randint(0, 3, (labeled, 1, 4, 4))]
    weights = (2 / 3, 1 / 3)
    total, terms = MGCCObjective(False, weights)((main, *aux), target, labeled, 0.5)
    head = MGCCSupervisedLoss(False)
    main_loss = sum(w * head(m[:labeled], t) for w, m, t in zip(weights, main, target))
    expected_supervised = (main_loss + sum(head(a[:labeled], target[0]) for a in aux)) / 4
    expected_consistency = np.mean(
        [F.mse_loss(main[0][labeled:].softmax(1), a[labeled:].softmax(1)).item() for a in aux]
    )
    assert float(terms["supervised"]) == pytest.approx(float(expected_supervised), rel=1e-6)
    assert float(terms["consistency"]) == pytest.approx(expected_consistency, rel=1e-6)
    assert float(total) == pytest.approx(float(expected_supervised) + 0.5 * expected_consistency, rel=1e-6)


def test_consistency_gradient_flows_into_main_and_auxiliary_heads():
    main = torch.randn(2, 3, 4, 4, requires_grad=True)
    aux = [torch.randn(2, 3, 4, 4, requires_grad=True) for _ in range(3)]
    consistency_loss(main, aux, regions=True).backward()
    assert main.grad.abs().sum() > 0 and all(a.grad.abs().sum() > 0 for a in aux)


def test_softmax_training_needs_two_channels():
    with pytest.raises(ValueError, match="at least 2 output channels"):
        MGCCSupervisedLoss(False)(torch.randn(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))


MGCC_COMBINATIONS = sorted(name for name in TRAINERS if name.startswith("nnUNetTrainerMGCC_"))


@pytest.mark.parametrize("trainer_name", MGCC_COMBINATIONS)
def test_every_registered_combination_trains_four_heads_and_infers_with_the_main_decoder(trainer_name):
    """Covers each ``nnUNetTrainerMGCC_<architecture>`` as soon as it is registered."""
    setting = setting_from_preset("2d_224", batch_size=1)
    trainer = find_registered_trainer(trainer_name)
    network = trainer.build_network_architecture(setting.plans_manager, setting.configuration_manager, 3, 9, True)
    assert isinstance(network, MGCCNetwork) and len(network.aux_decoders) == 3
    x = torch.randn(1, 3, 224, 224)
    main, *aux = network.train()(x)
    assert main[0].shape == (1, 9, 224, 224) and all(a.shape == (1, 9, 224, 224) for a in aux)
    called = []
    for decoder in network.aux_decoders:
        decoder.register_forward_hook(lambda *_: called.append("aux"))
    network.decoder.deep_supervision = False
    with torch.no_grad():
        assert network.eval()(x).shape == (1, 9, 224, 224) and not called
