"""GCGLE-Net: BRA against a dense computation and the official outputs, LEB/ECA/CSAM against direct computations
(and the official layout defects), reference parameter/FLOP counts, patch sizes, deep supervision, pretrained
loading and the official-weight name map."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nnunet_ext.checkpoints import extract_state_dict
from nnunet_ext.networks.attention.bra import (
    AttentionLePE,
    BiLevelRoutingAttention,
    masked_kernel_is_faster,
    region_grid,
)
from nnunet_ext.networks.gcgle import (
    CSAM,
    ECA,
    GCGLEConfig,
    GCGLENet,
    LocalExtractionBlock,
    eca_kernel_size,
    load_pretrained_encoder,
)
from nnunet_ext.official.gcgle import build_official_network, official_key_map

GOLDEN = Path(__file__).parent / "golden"
TINY = GCGLEConfig(dims=(16, 32, 64), bottleneck_dim=128, head_dim=8, depths=(1, 1, 2), decoder_depths=(1, 1, 1))


def randomised(module: nn.Module, seed: int = 0) -> nn.Module:
    """``module`` in eval mode with every parameter and BatchNorm statistic perturbed (nothing trivially 0/1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif tensor.is_floating_point():
                tensor.copy_(0.3 * torch.randn(tensor.shape, generator=generator))
    return module.eval()


def forward_parameters(network: GCGLENet) -> int:
    return sum(p.numel() for p in network.parameters()) - network.deep_supervision_head_parameters()


# --- bi-level routing attention -------------------------------------------------------------------------------


def dense_attention_with_lepe(bra: BiLevelRoutingAttention, x: torch.Tensor) -> torch.Tensor:
    """Plain multi-head attention of every pixel to every pixel, plus LePE of V, then ``wo`` (NHWC)."""
    n, h, w, c = x.shape
    heads, d = bra.num_heads, c // bra.num_heads
    qkv = x.reshape(n, h * w, c) @ bra.qkv.qkv.weight.T + bra.qkv.qkv.bias
    q, k, v = (t.reshape(n, h * w, heads, d) for t in qkv.split(c, dim=-1))
    weights = torch.einsum("nihd,njhd->nhij", q, k).mul(c**-0.5).softmax(-1)
    out = torch.einsum("nhij,njhd->nihd", weights, v).reshape(n, h, w, c)
    lepe = F.conv2d(v.reshape(n, h, w, c).permute(0, 3, 1, 2), bra.lepe.weight, bra.lepe.bias, padding=2, groups=c)
    return (out + lepe.permute(0, 2, 3, 1)) @ bra.wo.weight.T + bra.wo.bias


@pytest.mark.parametrize("kernel", ["gather", "masked"])
@pytest.mark.parametrize(("size", "grid", "topk"), [((12, 12), (3, 3), 9), ((8, 12), (2, 3), 6), ((6, 10), (3, 2), 50)])
def test_bra_equals_dense_attention_when_topk_covers_every_region(size, grid, topk, kernel):
    torch.manual_seed(0)
    bra = randomised(BiLevelRoutingAttention(24, 3, topk, region_size=4, kernel=kernel))
    x = torch.randn(2, *size, 24)
    with torch.no_grad():
        torch.testing.assert_close(bra(x, grid), dense_attention_with_lepe(bra, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kernel", ["gather", "masked"])
def test_bra_with_fewer_regions_differs_from_dense_and_routes_per_region(kernel):
    torch.manual_seed(0)
    bra = randomised(BiLevelRoutingAttention(24, 3, 1, region_size=4, kernel=kernel))
    x = torch.randn(1, 8, 8, 24)
    with torch.no_grad():
        routed = bra(x, (2, 2))
        assert not torch.allclose(routed, dense_attention_with_lepe(bra, x), atol=1e-3)
        x_far = x.clone()
        # with top-1 routing a region attends to one region only: changing a region nobody routes to must not
        # change the other regions' outputs except through LePE (zeroed here)
        bra.lepe.weight.zero_()
        bra.lepe.bias.zero_()
        q, k, _ = bra.qkv(x)
        q_r = q.reshape(1, 2, 4, 2, 4, 24).mean((2, 4)).reshape(4, 24)
        k_r = k.reshape(1, 2, 4, 2, 4, 24).mean((2, 4)).reshape(4, 24)
        chosen = (q_r @ k_r.T).argmax(-1)
        unrouted = [r for r in range(4) if r not in chosen.tolist()]
        assert unrouted, "the random input must leave a region unrouted"
        r = unrouted[0]
        x_far[0, 4 * (r // 2) : 4 * (r // 2) + 4, 4 * (r % 2) : 4 * (r % 2) + 4] += 0.01
        before, after = bra(x, (2, 2)), bra(x_far, (2, 2))
        changed = (before - after).abs().amax(-1) > 0
        expected = torch.zeros(8, 8, dtype=torch.bool)
        expected[4 * (r // 2) : 4 * (r // 2) + 4, 4 * (r % 2) : 4 * (r % 2) + 4] = True
        assert torch.equal(changed[0], expected)


@pytest.mark.parametrize("file_name", ["bra_dim96_nwin7_topk2.pt", "bra_dim192_nwin8_topk4.pt"])
def test_bra_reproduces_the_official_outputs(file_name):
    golden = torch.load(GOLDEN / file_name, weights_only=False)
    config = golden["config"]
    size = golden["input"].shape[1]
    bra = BiLevelRoutingAttention(config["dim"], config["num_heads"], config["topk"], size // config["n_win"])
    bra.load_state_dict(golden["state_dict"])
    assert region_grid((size, size), bra.region_size) == (config["n_win"], config["n_win"])
    with torch.no_grad():
        out = bra.eval()(golden["input"])
    tolerance = 1e-4 * max(1.0, golden["output"].abs().max().item())
    assert (out - golden["output"]).abs().max().item() <= tolerance


@pytest.mark.parametrize(("size", "grid", "topk"), [((8, 8), (4, 4), 3), ((12, 8), (3, 2), 2), ((16, 12), (4, 3), 5)])
def test_bra_masked_and_gather_kernels_agree_in_output_and_gradients(size, grid, topk):
    """Routed attention (top-k below the region count): the masked dense kernel gives the gather kernel's
    outputs and the same gradients for the input and every weight."""
    torch.manual_seed(0)
    gather = randomised(BiLevelRoutingAttention(24, 3, topk, region_size=4, kernel="gather")).double()
    masked = copy.deepcopy(gather)
    masked.kernel = "masked"
    x = torch.randn(2, *size, 24, dtype=torch.float64)
    results = []
    for bra in (gather, masked):
        x_grad = x.clone().requires_grad_()
        out = bra(x_grad, grid)
        out.pow(2).sum().backward()
        results.append((out, x_grad.grad, [p.grad for p in bra.parameters()]))
    (out_g, dx_g, dw_g), (out_m, dx_m, dw_m) = results
    torch.testing.assert_close(out_m, out_g)
    torch.testing.assert_close(dx_m, dx_g)
    for grad_m, grad_g in zip(dw_m, dw_g):
        torch.testing.assert_close(grad_m, grad_g)


def test_bra_auto_kernel_choice_and_bad_kernel():
    # GCGLE at 224 (7x7 regions of 8x8, 4x4, 2x2 pixels; top-k 2, 4, 8): masked only at 1/16
    assert [masked_kernel_is_faster(49, pixels, topk) for pixels, topk in [(64, 2), (16, 4), (4, 8)]] == [
        False,
        False,
        True,
    ]
    assert masked_kernel_is_faster(256, 4, 8) is False  # 1/16 of a 512 patch: 16x16 regions, dense 32x the FLOPs
    assert masked_kernel_is_faster(49, 64, 49) is True  # every region routed: full attention
    # the layer resolves "auto" with its top-k clamped to the regions; an explicit kernel is kept
    assert BiLevelRoutingAttention(384, 12, 8, 2).kernel_for((14, 14), (7, 7)) == "masked"
    assert BiLevelRoutingAttention(96, 3, 2, 8).kernel_for((56, 56), (7, 7)) == "gather"
    assert BiLevelRoutingAttention(96, 3, 50, 8).kernel_for((56, 56), (7, 7)) == "masked"
    assert BiLevelRoutingAttention(384, 12, 8, 2, kernel="gather").kernel_for((14, 14), (7, 7)) == "gather"
    # on CUDA "auto" is always the gather kernel (unmasked fused attention); an explicit kernel is kept there too
    assert BiLevelRoutingAttention(384, 12, 8, 2).kernel_for((14, 14), (7, 7), "cuda") == "gather"
    assert BiLevelRoutingAttention(96, 3, 50, 8).kernel_for((56, 56), (7, 7), "cuda") == "gather"
    assert BiLevelRoutingAttention(96, 3, 50, 8, kernel="masked").kernel_for((56, 56), (7, 7), "cuda") == "masked"
    with pytest.raises(ValueError, match="kernel"):
        BiLevelRoutingAttention(24, 3, 2, region_size=4, kernel="dense")


def test_region_grid_reproduces_published_n_win_and_tiles_any_map():
    for patch, n_win in [(224, 7), (256, 8)]:
        for stage, region in enumerate((8, 4, 2)):
            assert region_grid((patch // 4 // 2**stage,) * 2, region) == (n_win, n_win)
    assert region_grid((64, 56), 8) == (8, 7)
    assert region_grid((20, 10), 8) == (2, 1)
    for size in [(21, 11), (5, 7), (80, 64)]:
        grid = region_grid(size, 4)
        assert size[0] % grid[0] == 0 and size[1] % grid[1] == 0


def test_full_attention_with_lepe_matches_a_dense_computation():
    torch.manual_seed(0)
    attention = randomised(AttentionLePE(24, 3))
    x = torch.randn(2, 5, 7, 24)
    q, k, v = (x.reshape(2, 35, 24) @ attention.qkv.weight.T).reshape(2, 35, 3, 3, 8).unbind(2)
    weights = torch.einsum("nihd,njhd->nhij", q, k).mul(8**-0.5).softmax(-1)
    out = torch.einsum("nhij,njhd->nihd", weights, v).reshape(2, 5, 7, 24)
    lepe = F.conv2d(x.permute(0, 3, 1, 2), attention.lepe.weight, attention.lepe.bias, padding=2, groups=24)
    expected = (out + lepe.permute(0, 2, 3, 1)) @ attention.proj.weight.T + attention.proj.bias
    with torch.no_grad():
        torch.testing.assert_close(attention(x), expected, atol=1e-5, rtol=1e-4)


# --- LEB, ECA, CSAM -------------------------------------------------------------------------------------------


def test_eca_kernel_sizes_and_output():
    assert [eca_kernel_size(c) for c in (384, 768, 1536, 3072)] == [5, 5, 5, 7]
    eca = randomised(ECA(384))
    x = torch.randn(2, 384, 5, 6)
    k = eca.conv.weight.flatten()
    pooled = x.mean((2, 3))
    padded = F.pad(pooled, (2, 2))
    gate = torch.stack([(padded[:, i : i + 5] * k).sum(-1) for i in range(384)], dim=1).sigmoid()
    with torch.no_grad():
        torch.testing.assert_close(eca(x), x * gate[:, :, None, None])


def leb_branch(leb: LocalExtractionBlock, x_nchw: torch.Tensor) -> torch.Tensor:
    """The published LEB conv branch written out with functional ops (eval-mode BatchNorm)."""
    layers = leb.conv

    def bn(t, module):
        return F.batch_norm(t, module.running_mean, module.running_var, module.weight, module.bias, eps=module.eps)

    hidden = layers[0].out_channels
    t = F.relu6(bn(F.conv2d(x_nchw, layers[0].weight), layers[1]))
    t = F.relu6(bn(F.conv2d(t, layers[3].weight, padding=2, groups=hidden), layers[4]))
    t = layers[6](t)
    return bn(F.conv2d(t, layers[7].weight), layers[8])


def test_leb_is_its_conv_branch_plus_identity():
    torch.manual_seed(0)
    leb = randomised(LocalExtractionBlock(16))
    x = torch.randn(2, 6, 9, 16)
    expected = x + leb_branch(leb, x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    with torch.no_grad():
        torch.testing.assert_close(leb(x), expected, atol=1e-5, rtol=1e-4)


def test_leb_official_layout_bug_transposes_its_output():
    """Transcribes the official LEB: ``x = x.permute(0, 3, 1, 2); x = x + conv(x); return x.permute(0, 3, 2, 1)``."""
    torch.manual_seed(0)
    leb = randomised(LocalExtractionBlock(16, official_layout_bugs=True))
    x = torch.randn(2, 7, 7, 16)
    nchw = x.permute(0, 3, 1, 2)
    official = (nchw + leb_branch(leb, nchw)).permute(0, 3, 2, 1)
    with torch.no_grad():
        out = leb(x)
        torch.testing.assert_close(out, official, atol=1e-5, rtol=1e-4)
        leb.official_layout_bugs = False
        assert not torch.allclose(out, leb(x), atol=1e-3)
        leb.official_layout_bugs = True
        with pytest.raises(ValueError, match="square"):
            leb(torch.randn(1, 4, 6, 16))


def csam_reference(csam: CSAM, x: torch.Tensor, official_layout: bool) -> torch.Tensor:
    """CSAM written out: per-pixel channel MLP (no sigmoid), then a sigmoid spatial gate. ``official_layout``
    transcribes the official ``x.contiguous().view(b, h, w, c)`` of the NCHW tensor as the MLP's input."""
    b, c, h, w = x.shape
    ca, sa = csam.channel_attention, csam.spatial_attention
    tokens = x.contiguous().view(b, h * w, c) if official_layout else x.permute(0, 2, 3, 1).reshape(b, h * w, c)
    gate = F.relu(tokens @ ca[0].weight.T + ca[0].bias) @ ca[2].weight.T + ca[2].bias
    x = x * gate.view(b, h, w, c).permute(0, 3, 1, 2)

    def bn(t, module):
        return F.batch_norm(t, module.running_mean, module.running_var, module.weight, module.bias, eps=module.eps)

    s = F.relu(bn(F.conv2d(x, sa[0].weight, sa[0].bias, padding=2), sa[1]))
    s = bn(F.conv2d(s, sa[3].weight, sa[3].bias, padding=2), sa[4])
    return x * s.sigmoid()


@pytest.mark.parametrize("official_layout_bugs", [False, True])
def test_csam_matches_its_written_out_computation(official_layout_bugs):
    torch.manual_seed(0)
    csam = randomised(CSAM(32, official_layout_bugs=official_layout_bugs))
    assert csam.spatial_attention[0].kernel_size == (5, 5) and csam.channel_attention[0].out_features == 8
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        out = csam(x)
        torch.testing.assert_close(out, csam_reference(csam, x, official_layout_bugs), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(
            csam_reference(csam, x, not official_layout_bugs) == out, torch.zeros_like(out, dtype=torch.bool)
        )


# --- the whole network ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def published_r4() -> GCGLENet:
    return GCGLENet(3, 9, GCGLEConfig(), deep_supervision=True)


@pytest.mark.parametrize(
    ("config", "input_channels", "num_classes", "expected"),
    [
        (GCGLEConfig(), 3, 9, 47_393_016),
        (GCGLEConfig(), 3, 4, 47_392_536),
        (GCGLEConfig(), 3, 1, 47_392_248),
        (GCGLEConfig(four_level_decoder=False), 3, 9, 46_641_998),
        (GCGLEConfig(four_level_decoder=False), 3, 4, 46_641_518),
        (GCGLEConfig(bottleneck_depth=2), 3, 9, 47_393_016 + 14_400_014),
        (GCGLEConfig(), 1, 9, 47_393_016 - 2 * 48 * 9),
    ],
)
def test_parameter_count_equals_the_reference_params_used_in_forward(config, input_channels, num_classes, expected):
    assert forward_parameters(GCGLENet(input_channels, num_classes, config, deep_supervision=True)) == expected


@pytest.mark.parametrize(
    ("patch", "num_classes", "reference_flops"), [(224, 9, 30_209_568_000), (256, 2, 39_383_233_536)]
)
def test_flops_match_the_reference_within_one_percent(patch, num_classes, reference_flops):
    """The paper's computation (BRA's gather kernel) has the reference FLOPs; the default ``"auto"`` kernel choice
    runs the 1/16 stage as masked dense attention, which computes (and counts) more."""
    counts = {}
    for kernel in ("gather", "auto"):
        network = GCGLENet(3, num_classes, GCGLEConfig(bra_kernel=kernel)).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            network(torch.zeros(1, 3, patch, patch))
        counts[kernel] = counter.get_total_flops()
    assert abs(counts["gather"] - reference_flops) <= 0.01 * reference_flops
    assert counts["auto"] > counts["gather"]


def test_published_network_output_and_deep_supervision(published_r4):
    network = published_r4.eval()
    with torch.no_grad():
        outputs = network(torch.randn(1, 3, 224, 224))
    assert [tuple(o.shape) for o in outputs] == [(1, 9, 224, 224), (1, 9, 56, 56), (1, 9, 28, 28), (1, 9, 14, 14)]
    assert network.deep_supervision_scales == [[1.0, 1.0], [0.25, 0.25], [0.125, 0.125], [0.0625, 0.0625]]
    assert network.decoder.seg_heads[-1].bias is None


@pytest.mark.parametrize("patch", [(256, 224), (320, 256), (512, 512), (96, 160), (84, 52), (64, 64)])
def test_any_patch_and_channel_count(patch):
    network = GCGLENet(2, 3, TINY, deep_supervision=True).eval()
    with torch.no_grad():
        outputs = network(torch.randn(1, 2, *patch))
    for output, scale in zip(outputs, network.deep_supervision_scales):
        assert output.shape == (1, 3, *[round(p * s) for p, s in zip(patch, scale)])


def test_output_size_equals_input_size_for_sides_not_divisible_by_32():
    network = GCGLENet(1, 2, TINY).eval()
    with torch.no_grad():
        assert network(torch.randn(1, 1, 84, 52)).shape == (1, 2, 84, 52)
    with pytest.raises(ValueError, match="divisible by 4"):
        network(torch.randn(1, 1, 66, 64))


def test_three_level_decoder_and_bottleneck_blocks():
    r3 = GCGLENet(1, 2, GCGLEConfig(**{**TINY.__dict__, "four_level_decoder": False}), deep_supervision=True).eval()
    assert len(r3.decoder.levels) == 2 and r3.decoder.levels[-1].upsample is not None
    with torch.no_grad():
        assert [o.shape[-1] for o in r3(torch.randn(1, 1, 64, 64))] == [64, 8, 4]
        assert [tuple(o.shape[-2:]) for o in r3(torch.randn(1, 1, 84, 52))] == [(84, 52), (10, 6), (5, 3)]
    with_bottleneck = GCGLENet(1, 2, GCGLEConfig(**{**TINY.__dict__, "bottleneck_depth": 2}))
    assert isinstance(with_bottleneck.encoder.stages[3][0].attn, AttentionLePE)
    assert len(GCGLENet(1, 2, TINY).encoder.stages[3]) == 0


def test_contract_encoder_decoder_copy_and_features():
    torch.manual_seed(0)
    network = GCGLENet(1, 2, TINY, deep_supervision=False).eval()
    x = torch.randn(1, 1, 64, 96)
    with torch.no_grad():
        skips = network.encoder(x)
        assert [tuple(s.shape[1:]) for s in skips] == [(16, 16, 24), (32, 8, 12), (64, 4, 6), (128, 2, 3)]
        decoder = copy.deepcopy(network.decoder)
        logits, features = decoder(skips, return_features=True)
        torch.testing.assert_close(logits, network(x))
        assert features.shape == (1, 16, 64, 96)


def test_deep_supervision_final_output_equals_plain_output_and_weights_load():
    torch.manual_seed(0)
    trained = GCGLENet(1, 2, TINY, deep_supervision=True).eval()
    x = torch.randn(1, 1, 64, 64)
    inference = GCGLENet(1, 2, TINY, deep_supervision=False).eval()
    inference.load_state_dict(trained.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(trained(x)[0], inference(x))


def test_bra_kernel_choice_changes_neither_outputs_nor_gradients():
    """At 128x128 the 1/16 stage (8x8 map, 4x4 regions of 2x2 pixels, top-8 of 16) runs the masked kernel under
    ``"auto"``; the network equals the all-gather network in logits and in every parameter's gradient."""
    torch.manual_seed(0)
    networks = [
        GCGLENet(1, 2, GCGLEConfig(**{**TINY.__dict__, "bra_kernel": k})).double().eval() for k in ("gather", "auto")
    ]
    networks[1].load_state_dict(networks[0].state_dict())
    assert networks[1].encoder.stages[2][0].attn.kernel_for((8, 8), (4, 4)) == "masked"
    assert networks[0].encoder.stages[2][0].attn.kernel_for((8, 8), (4, 4)) == "gather"
    x = torch.randn(1, 1, 128, 128, dtype=torch.float64)
    outputs = []
    for network in networks:
        out = network(x)
        out.square().mean().backward()
        outputs.append(out)
    torch.testing.assert_close(outputs[1], outputs[0])
    for (name, gathered), auto in zip(networks[0].named_parameters(), networks[1].parameters()):
        torch.testing.assert_close(auto.grad, gathered.grad, msg=name)


def test_backward_reaches_every_parameter():
    network = GCGLENet(1, 2, GCGLEConfig(**{**TINY.__dict__, "bottleneck_depth": 1}), deep_supervision=True)
    sum(o.mean() for o in network(torch.randn(2, 1, 64, 64))).backward()
    assert [n for n, p in network.named_parameters() if p.grad is None] == []


def test_pretrained_encoder_loading_matches_name_and_shape():
    torch.manual_seed(0)
    network = GCGLENet(1, 2, TINY)
    source = GCGLENet(3, 5, TINY).encoder.state_dict()
    checkpoint = {"model": {**source, "head.weight": torch.zeros(1000, 128), "stages.0.0.mlp.0.weight": torch.zeros(3)}}
    loaded, skipped = load_pretrained_encoder(network, extract_state_dict(checkpoint))
    own = network.encoder.state_dict()
    assert set(skipped) == {"head.weight", "stages.0.0.mlp.0.weight", "downsample_layers.0.0.weight"}
    assert len(loaded) == len(source) - 1
    assert all(torch.equal(own[name], source[name]) for name in loaded)
    assert not torch.equal(own["downsample_layers.0.0.weight"][:, :1], source["downsample_layers.0.0.weight"][:, :1])


# --- official weights -----------------------------------------------------------------------------------------


def official_tensors() -> list[dict]:
    return json.loads((GOLDEN / "gcgle_r4_official_state_dict_keys.json").read_text())["tensors"]


def test_official_key_map_covers_every_used_tensor_with_matching_shapes(published_r4):
    tensors = official_tensors()
    network = build_official_network(3, 9)
    mapping, unused = official_key_map([t["name"] for t in tensors], network)
    own = network.state_dict()
    used = {t["name"] for t in tensors if t.get("used_in_forward", True)}
    assert set(mapping) | set(unused) == {t["name"] for t in tensors}
    assert {t["name"] for t in tensors if t.get("used_in_forward") is False} <= set(unused)
    assert all(name.startswith(("bra_unet.stages.3.", "bra_unet.output_conv1.")) for name in unused)
    assert set(mapping) <= used and len(set(mapping.values())) == len(mapping)
    shapes = {t["name"]: tuple(t["shape"]) for t in tensors}
    assert all(tuple(own[ours].shape) == shapes[official] for official, ours in mapping.items())
    heads = {n for n in own if n.startswith("decoder.seg_heads.") and not n.startswith("decoder.seg_heads.3.")}
    assert set(own) - set(mapping.values()) == heads

    # loading a synthetic official state dict through the map reproduces its tensors
    generator = torch.Generator().manual_seed(0)
    official_state = {t["name"]: torch.randn(t["shape"], generator=generator) for t in tensors}
    network.load_state_dict({ours: official_state[off] for off, ours in mapping.items()}, strict=False)
    assert torch.equal(
        network.state_dict()["decoder.levels.0.csam.channel_attention.0.weight"],
        official_state["bra_unet.csam3.channel_attention.0.weight"],
    )


def test_official_key_map_for_grey_images_sums_the_stem_kernel():
    names = [t["name"] for t in official_tensors()]
    _, _, transforms = official_key_map(names, build_official_network(1, 9))
    assert list(transforms) == ["bra_unet.downsample_layers.0.0.weight"]
    weight = torch.randn(48, 3, 3, 3)
    grey = torch.randn(1, 1, 8, 8)
    torch.testing.assert_close(
        F.conv2d(grey, transforms["bra_unet.downsample_layers.0.0.weight"](weight)),
        F.conv2d(grey.repeat(1, 3, 1, 1), weight),
    )
    with pytest.raises(ValueError, match="1 or 3 input channels"):
        official_key_map(names, GCGLENet(2, 9, TINY))
    with pytest.raises(KeyError, match="does not have"):
        official_key_map(names, GCGLENet(3, 9, TINY))


def test_layout_bug_network_runs_only_on_square_patches():
    network = GCGLENet(1, 2, GCGLEConfig(**{**TINY.__dict__, "official_layout_bugs": True})).eval()
    with torch.no_grad():
        assert network(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)
        with pytest.raises(ValueError, match="square"):
            network(torch.randn(1, 1, 64, 96))
    assert math.isclose(GCGLEConfig().drop_path_rate, 0.2)
