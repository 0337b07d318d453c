"""GuidedNet components: 3D-CGMM and KT-CPS against naive loops, hand computations and the official code's golden
values (``tests/golden/guidednet_losses.pt``); the feature wrapper; gradients into both networks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_ext.benchmark.presets import setting_from_preset
from nnunet_ext.networks.cmunext import CMUNEXT_VARIANTS, CMUNeXt
from nnunet_ext.networks.features import PARTNER_PREFIX, FeatureNetwork
from nnunet_ext.registration import TRAINERS, find_registered_trainer
from nnunet_ext.ssl import cgmm, ktcps
from nnunet_ext.ssl.guidednet import guidednet_loss

GOLDEN = Path(__file__).parent / "golden" / "guidednet_losses.pt"


# ---------------------------------------------------------------------------------------------- naive references
def naive_prototypes(features, labels, num_classes):
    """Per patch and class: sum of the class's voxel features / (count + 1e-6), voxel by voxel."""
    batch, channels = features.shape[:2]
    flat_features, flat_labels = features.reshape(batch, channels, -1), labels.reshape(batch, -1)
    result = torch.zeros(batch, num_classes, channels, dtype=torch.float64)
    for i in range(batch):
        counts = [0] * num_classes
        for v in range(flat_labels.shape[1]):
            k = int(flat_labels[i, v])
            result[i, k] += flat_features[i, :, v].double()
            counts[k] += 1
        for k in range(num_classes):
            result[i, k] /= counts[k] + 1e-6
    return result


def naive_response(features, prototypes):
    """exp(-d^2), d = mean_c |f_c(v) - mu_kc|, voxel by voxel and class by class."""
    batch, channels = features.shape[:2]
    flat = features.reshape(batch, channels, -1).double()
    result = torch.zeros(batch, prototypes.shape[1], flat.shape[-1], dtype=torch.float64)
    for i in range(batch):
        for k in range(prototypes.shape[1]):
            for v in range(flat.shape[-1]):
                d = sum(abs(float(flat[i, c, v]) - float(prototypes[i, k, c])) for c in range(channels)) / channels
                result[i, k, v] = math.exp(-(d**2))
    return result.reshape(batch, prototypes.shape[1], *features.shape[2:])


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
def test_prototypes_and_responses_match_naive_loops(spatial):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, *spatial, generator=generator)
    labels = torch.randint(0, 3, (2, *spatial), generator=generator)
    labels[1][labels[1] == 2] = 1  # class 2 absent from patch 1: zero prototype, presence 0
    mu = cgmm.prototypes(features, labels, 4)
    torch.testing.assert_close(mu.double(), naive_prototypes(features, labels, 4))
    assert mu[1, 2].abs().max() == 0 and mu[:, 3].abs().max() == 0
    assert cgmm.class_presence(labels, 4).tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    torch.testing.assert_close(cgmm.response(features, mu).double(), naive_response(features, mu))


def test_response_gradients_match_autograd_of_the_dense_formula():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 4, 3, 5, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    mu = torch.randn(2, 3, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    upstream = torch.rand(2, 3, 3, 5, 6, dtype=torch.float64, generator=generator)
    lean = torch.autograd.grad((cgmm.response(features, mu) * upstream).sum(), (features, mu))
    dense_distance = (features[:, None] - mu[:, :, :, None, None, None]).abs().mean(2)  # (B, K, *S)
    dense = torch.autograd.grad((torch.exp(-dense_distance.square()) * upstream).sum(), (features, mu))
    for ours, reference in zip(lean, dense):
        torch.testing.assert_close(ours.double(), reference, rtol=1e-5, atol=1e-6)


def test_prototype_separation_on_a_hand_example():
    mu = torch.tensor([[[0.0, 0.0], [1.0, 3.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 1.0], [2.0, 0.0]]])
    presence = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # v_0 = (1, 1), v_1 = (1, 4), v_2 = (2, 0); pairs (0,1): d=1.5, (0,2): d=1, (1,2): d=2.5
    expected = (math.exp(-(1.5**2)) + math.exp(-1) + math.exp(-(2.5**2))) / 3
    assert cgmm.prototype_separation_loss(mu, presence).item() == pytest.approx(expected, rel=1e-5)
    assert cgmm.prototype_separation_loss(mu, torch.tensor([[1.0, 0, 0], [1.0, 0, 0]])).item() == 0


def test_unlabeled_patches_pair_with_labeled_ones_cyclically():
    assert cgmm.paired_labeled_index(5, 2, torch.device("cpu")).tolist() == [0, 1, 0, 1, 0]


def test_cgmm_refuses_features_at_another_resolution():
    with pytest.raises(ValueError, match="decoder feature at the prediction's resolution"):
        cgmm.cgmm_terms(torch.rand(2, 3, 8, 8), torch.rand(2, 4, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long), 1)


# ------------------------------------------------------------------------------------------------------ KT-CPS
def test_ktcps_weights_on_a_hand_computed_example():
    labels = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1, 2, 2]])
    predicted = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 2, 2, 2]])  # voxel 5 (0->1) and 7 (1->2) wrong
    logits = torch.nn.functional.one_hot(predicted, 3).movedim(-1, 1).float()
    counts = ktcps.correct_voxel_counts(logits, labels)
    assert counts.tolist() == [7, 1, 2]  # 5 right background + 2 mispredicted voxels counted as class 0
    # P = (7/7, 7/1, 7/2); w_k = 3 log P_k / log 7
    expected = [0.0, 3.0, 3 * math.log(3.5) / math.log(7)]
    weights = ktcps.class_weights(counts)
    assert weights.tolist() == pytest.approx(expected, abs=1e-6) and weights[0] == 0
    assert ktcps.class_weights(torch.tensor([4.0, 4.0, 4.0])) is None


def test_per_network_state_updates_each_row_from_its_own_network():
    state = ktcps.KTCPSClassWeights(3)
    state.initialise(torch.tensor([100.0, 10.0, 1.0]))
    initial = 3 * torch.log(torch.tensor([1.0, 10.0, 100.0])) / math.log(100)
    torch.testing.assert_close(state.weights, initial.expand(2, 3))
    counts1, counts2 = torch.tensor([7.0, 1.0, 2.0]), torch.tensor([5.0, 5.0, 1.0])
    weights_a, weights_b = state.update(counts1, counts2)
    torch.testing.assert_close(weights_a, 0.99 * initial + 0.01 * ktcps.class_weights(counts1))
    torch.testing.assert_close(weights_b, 0.99 * initial + 0.01 * ktcps.class_weights(counts2))
    restored = ktcps.KTCPSClassWeights(3)
    restored.load_state_dict(state.state_dict())
    torch.testing.assert_close(restored.weights, state.weights)
    with pytest.raises(ValueError, match="does not fit"):
        ktcps.KTCPSClassWeights(3, shared=True).load_state_dict(state.state_dict())


def test_weighted_cps_is_torchs_weighted_mean_and_zero_without_weighted_targets():
    generator = torch.Generator().manual_seed(1)
    logits1, logits2 = torch.randn(2, 3, 4, 4, generator=generator), torch.randn(2, 3, 4, 4, generator=generator)
    weights_a, weights_b = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.0, 2.0, 3.0])
    expected = nn.functional.cross_entropy(logits1, logits2.argmax(1), weight=weights_b) + nn.functional.cross_entropy(
        logits2, logits1.argmax(1), weight=weights_a
    )
    torch.testing.assert_close(ktcps.cross_pseudo_supervision(logits1, logits2, weights_a, weights_b), expected)
    background = torch.zeros(1, 3, 4, 4)
    background[:, 0] = 5
    assert ktcps.cross_pseudo_supervision(background, background, weights_a, weights_b).item() == 0


# ------------------------------------------------------------------------------------------------------ golden
@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=False)


def golden_loss(golden, shared: bool):
    inputs = golden["inputs"]
    labels = inputs["label"][: inputs["labeled_bs"]]
    state = ktcps.KTCPSClassWeights(4, shared=shared)
    state.weights[:] = inputs["ktcps_state_before"]
    supervised = (golden["net1"]["sup"], golden["net2"]["sup"])
    logits, features = (inputs["logits1"], inputs["logits2"]), (inputs["features1"], inputs["features2"])
    return guidednet_loss(logits, features, supervised, labels, state, inputs["iteration"]), state


@pytest.mark.parametrize("network", [1, 2])
def test_cgmm_components_reproduce_the_official_code(golden, network):
    inputs, expected = golden["inputs"], golden[f"net{network}"]
    num_labeled = inputs["labeled_bs"]
    labels, features = inputs["label"][:num_labeled], inputs[f"features{network}"]
    probabilities = torch.softmax(inputs[f"logits{network}"], 1)
    terms = cgmm.cgmm_terms(probabilities, features, labels, num_labeled)
    torch.testing.assert_close(terms.prototypes, expected["prototypes"], rtol=1e-4, atol=1e-6)
    presence = cgmm.class_presence(labels, 4)
    assert cgmm.prototype_separation_loss(terms.prototypes, presence).item() == pytest.approx(
        expected["proto_loss"].item(), rel=1e-4
    )
    torch.testing.assert_close(terms.masked_response, expected["response"], rtol=1e-4, atol=1e-6)
    assert terms.gmm.item() == pytest.approx(expected["gmm"].item(), rel=1e-4)
    unlabeled_response = cgmm.response(features[num_labeled:], terms.prototypes)
    torch.testing.assert_close(unlabeled_response, expected["response_u"], rtol=1e-4, atol=1e-6)
    # the official unlabeled loss runs in float16; ours in float32 (README: agreement to about 1e-3)
    assert terms.gmm_unlabeled.item() == pytest.approx(expected["gmm_u"].item(), rel=1e-3)


def test_official_shared_state_mode_reproduces_the_official_iteration(golden):
    (loss, terms), state = golden_loss(golden, shared=True)
    assert terms["consistency_weight"] == pytest.approx(golden["consistency_weight"], rel=1e-6)
    assert terms["consistency_weight"] * terms["cgmm_consistency"].item() == pytest.approx(
        golden["cgmm_consistency"].item(), rel=1e-3
    )
    torch.testing.assert_close(state.weights[0], golden["ktcps_weight_B"])
    assert terms["ktcps"].item() == pytest.approx(golden["loss_ktcps"].item(), rel=1e-5)
    assert loss.item() == pytest.approx(golden["total"].item(), rel=1e-4)


def test_per_network_state_mode_differs_from_the_official_shared_state_only_in_kt_cps(golden):
    """The official code updates one state twice: W_A = EMA(W0, w(n1)), W_B = EMA(W_A, w(n2)), so W_B carries
    network 1's counts too. Per network (our default) W_A = EMA(W0, w(n1)) is the same, but
    W_B = EMA(W0, w(n2)): only network 1's pseudo-supervision weight (W_B) and hence ``ktcps`` and the total change.
    Checked by hand here; every other term equals the official one."""
    (loss, terms), state = golden_loss(golden, shared=False)
    inputs = golden["inputs"]
    labels = inputs["label"][: inputs["labeled_bs"]]
    before = inputs["ktcps_state_before"]
    counts1 = ktcps.correct_voxel_counts(inputs["logits1"][:2], labels)
    counts2 = ktcps.correct_voxel_counts(inputs["logits2"][:2], labels)
    weights_a = 0.99 * before + 0.01 * ktcps.class_weights(counts1)
    weights_b = 0.99 * before + 0.01 * ktcps.class_weights(counts2)
    torch.testing.assert_close(state.weights, torch.stack([weights_a, weights_b]))
    torch.testing.assert_close(weights_a, golden["ktcps_weight_A"])  # the first update is the official one
    assert not torch.allclose(weights_b, golden["ktcps_weight_B"], rtol=0, atol=1e-5)
    expected_ktcps = nn.functional.cross_entropy(
        inputs["logits1"], inputs["logits2"].argmax(1), weight=weights_b
    ) + nn.functional.cross_entropy(inputs["logits2"], inputs["logits1"].argmax(1), weight=weights_a)
    assert terms["ktcps"].item() == pytest.approx(expected_ktcps.item(), rel=1e-5)
    official_without_ktcps = golden["total"].item() - golden["consistency_weight"] * golden["loss_ktcps"].item()
    assert loss.item() - terms["consistency_weight"] * terms["ktcps"].item() == pytest.approx(
        official_without_ktcps, rel=1e-4
    )


# ------------------------------------------------------------------------------------------- networks, gradients
def tiny_plain_unet(conv_op=nn.Conv2d) -> PlainConvUNet:
    norm = nn.InstanceNorm2d if conv_op is nn.Conv2d else nn.InstanceNorm3d
    return PlainConvUNet(
        1, 3, (4, 8, 16), conv_op, 3, (1, 2, 2), (2, 2, 2), 3, (2, 2), True, norm, {"affine": True},
        nonlin=nn.LeakyReLU, deep_supervision=True,
    )  # fmt: skip


def tiny_cmunext(conv_op=nn.Conv2d) -> CMUNeXt:
    return CMUNeXt(1, 3, CMUNEXT_VARIANTS["cmunext_s"].truncated(3), conv_op=conv_op, deep_supervision=True)


@pytest.mark.parametrize("build", [tiny_plain_unet, tiny_cmunext])
def test_feature_network_returns_the_final_head_input_and_keeps_the_state_dict(build):
    torch.manual_seed(0)
    network = build()
    wrapped = FeatureNetwork(network)
    assert list(wrapped.state_dict()) == list(network.state_dict())
    x = torch.randn(2, 1, 16, 16)
    logits, features = wrapped(x, return_features=True)
    assert isinstance(logits, list) and logits[0].shape == (2, 3, 16, 16) and features.shape[2:] == (16, 16)
    final_head = network.decoder.seg_layers[-1] if hasattr(network.decoder, "seg_layers") else None
    final_head = final_head or network.decoder.seg_heads[-1]
    torch.testing.assert_close(final_head(features), logits[0])
    torch.testing.assert_close(wrapped(x)[0], logits[0])


def test_averaged_export_averages_both_networks_probabilities():
    torch.manual_seed(0)
    first, second = FeatureNetwork(tiny_plain_unet()), FeatureNetwork(tiny_plain_unet())
    for network in (first, second):
        network.decoder.deep_supervision = False
        network.eval()
    state = {**first.state_dict(), **{PARTNER_PREFIX + k: v for k, v in second.state_dict().items()}}
    inference = FeatureNetwork(tiny_plain_unet())
    inference.decoder.deep_supervision = False
    inference.load_state_dict(state)
    inference.eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        expected = (torch.softmax(first(x), 1) + torch.softmax(second(x), 1)) / 2
        torch.testing.assert_close(torch.softmax(inference(x), 1), expected)
        inference.load_state_dict(first.state_dict())  # a one-network export drops the partner
        torch.testing.assert_close(inference(x), first(x))


def test_networks_without_a_readable_last_feature_are_refused():
    class Decoder(nn.Module):
        pass

    network = nn.Module()
    network.encoder, network.decoder = nn.Identity(), Decoder()
    with pytest.raises(TypeError, match="last decoder feature cannot be read"):
        FeatureNetwork(network)


@pytest.mark.parametrize(("build", "conv_op", "shape"), [(tiny_plain_unet, nn.Conv2d, (16, 16)),
                                                          (tiny_plain_unet, nn.Conv3d, (8, 16, 16)),
                                                          (tiny_cmunext, nn.Conv3d, (8, 16, 16))])  # fmt: skip
def test_both_networks_receive_gradients_from_every_term(build, conv_op, shape):
    torch.manual_seed(0)
    networks = [FeatureNetwork(build(conv_op)) for _ in range(2)]
    data = torch.randn(4, 1, *shape)
    labels = torch.randint(0, 3, (2, *shape))
    state = ktcps.KTCPSClassWeights(3)
    state.initialise(torch.tensor([50.0, 10.0, 5.0]))
    outputs = [network(data, return_features=True) for network in networks]
    logits = [output[0][0] for output in outputs]
    features = [output[1] for output in outputs]
    zero = torch.zeros(())
    loss, terms = guidednet_loss(logits, features, (zero, zero), labels, state, iteration=30_000)
    assert {"gmm1", "gmm_u2", "cgmm_consistency", "ktcps"} <= set(terms)
    loss.backward()
    for network in networks:
        # the full-resolution path (encoder, decoder, final head) gets gradients from the scheme terms alone
        final_head = network.decoder.seg_layers[-1] if hasattr(network.decoder, "seg_layers") else None
        final_head = final_head or network.decoder.seg_heads[-1]
        for parameter in [*network.encoder.parameters(), *final_head.parameters()]:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------------- benchmark
def test_benchmark_times_the_scheme_step_and_compares_with_the_supervised_trainer():
    from nnunet_ext.benchmark.measure import measure_trainer
    from nnunet_ext.benchmark.presets import setting_from_preset
    from nnunet_ext.cli.benchmark import format_scheme_table

    setting = setting_from_preset("2d_256", batch_size=2)
    rows = [
        measure_trainer(name, setting, "cpu", warmup=0, repeats=1, threads=1)
        for name in ("nnUNetTrainerCMUNeXt", "nnUNetTrainerGuidedNet_CMUNeXt")
    ]
    supervised, scheme = rows
    assert scheme["error"] is None and scheme["network"] == "CMUNeXt"
    assert scheme["supervised_reference"] == "nnUNetTrainerCMUNeXt" and supervised["supervised_reference"] is None
    assert scheme["params"] == 2 * supervised["params"] and scheme["params_forward"] == supervised["params_forward"]
    assert scheme["train_step_ms"] > 0
    table = format_scheme_table(rows)
    ratio = scheme["train_step_ms"] / supervised["train_step_ms"]
    assert f"| nnUNetTrainerGuidedNet_CMUNeXt | {scheme['train_step_ms']:.1f} |" in table
    assert f"| nnUNetTrainerCMUNeXt | {supervised['train_step_ms']:.1f} | {ratio:.2f} |" in table
    assert 0 < scheme["same_network_supervised_ms"] < scheme["train_step_ms"]
    assert format_scheme_table(rows[:1]) == ""


GUIDEDNET_COMBINATIONS = sorted(name for name in TRAINERS if name.startswith("nnUNetTrainerGuidedNet_"))


@pytest.mark.parametrize("trainer_name", GUIDEDNET_COMBINATIONS)
def test_every_registered_combination_exposes_a_full_resolution_last_feature(trainer_name):
    """Covers each ``nnUNetTrainerGuidedNet_<architecture>`` as soon as it is registered: the network its
    supervised trainer builds, wrapped so that CGMM reads the input of the final head at the input resolution."""
    trainer = find_registered_trainer(trainer_name)
    setting = setting_from_preset("2d_224", batch_size=1)
    network = trainer.build_network_architecture(setting.plans_manager, setting.configuration_manager, 1, 3, True)
    reference = trainer.supervised_trainer.build_network_architecture(
        setting.plans_manager, setting.configuration_manager, 1, 3, True
    )
    assert isinstance(network, FeatureNetwork) and set(network.state_dict()) == set(reference.state_dict())
    logits, features = network.train()(torch.randn(1, 1, 224, 224), return_features=True)
    assert logits[0].shape == (1, 3, 224, 224) and features.shape[-2:] == (224, 224)


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerGuidedNet_GCTUNet", "nnUNetTrainerMGCC_GCTUNet"])
def test_schemes_on_gct_unet_train_in_3d_anisotropic_plans(trainer_name):
    """GCT-UNet is dimension-agnostic, so both schemes on it run in 3D (plans with no pooling along z at first)."""
    setting = setting_from_preset("3d_aniso", batch_size=1)
    trainer = find_registered_trainer(trainer_name)
    network = trainer.build_network_architecture(setting.plans_manager, setting.configuration_manager, 1, 2, True)
    x = torch.randn(2, 1, 16, 32, 32)
    if trainer_name.startswith("nnUNetTrainerGuidedNet"):
        logits, features = network.train()(x, return_features=True)
        assert features.shape[-3:] == (16, 32, 32)
    else:
        logits, *aux = network.train()(x)
        assert [a.shape for a in aux] == [(2, 2, 16, 32, 32)] * 3
    assert logits[0].shape == (2, 2, 16, 32, 32)
