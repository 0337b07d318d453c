"""GCtx-UNet network: attention against naive computations, official equivalence, counts, shapes, init, errors."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nnunet_ext.benchmark.measure import measure_trainer
from nnunet_ext.benchmark.presets import setting_from_preset
from nnunet_ext.networks.gctx_unet import (
    OFFICIAL_MODULES,
    GCtxUNet,
    GCViTBlock,
    GlobalQueryGen,
    level_windows,
    load_gcvit_encoder_weights,
)
from nnunet_ext.official.gctx_unet import build_official_network, official_key_map
from nnunet_ext.trainers.gctx_unet import (
    PRETRAINED_VARIABLE,
    build_gctx_unet,
    nnUNetTrainerGCTxUNet,
    nnUNetTrainerGCTxUNet_MLP3,
)
from nnunet_ext.trainers.pretrained import initialise_from_environment

GOLDEN = Path(__file__).parent / "golden" / "gctx_unet_mlp4.pt"


def core_parameters(network: GCtxUNet) -> int:
    return sum(p.numel() for p in network.parameters()) - network.deep_supervision_head_parameters()


def naive_block(block: GCViTBlock, x: torch.Tensor, q_global: torch.Tensor | None) -> torch.Tensor:
    """GC-ViT block by explicit loops over pixels: window membership, token offsets and the bias table lookup.

    x: (B, H, W, C); q_global: (B, heads, wh*ww, head_dim) or None for local attention.
    """
    attn, (wh, ww) = block.attn, block.window
    b_size, height, width, channels = x.shape
    heads, head_dim = attn.num_heads, channels // attn.num_heads
    y = torch.nn.functional.layer_norm(x, (channels,), block.norm1.weight, block.norm1.bias)
    weight, bias = attn.qkv.weight, attn.qkv.bias
    out = torch.zeros_like(x)
    for b, py, px in itertools.product(range(b_size), range(height), range(width)):
        top, left = py - py % wh, px - px % ww
        members = [(top + i, left + j) for i in range(wh) for j in range(ww)]
        token = (py - top) * ww + (px - left)
        per_head = []
        for h in range(heads):
            rows = slice(h * head_dim, (h + 1) * head_dim)
            if q_global is None:
                q = y[b, py, px] @ weight[rows].T + bias[rows]
                k_rows = slice(channels + h * head_dim, channels + (h + 1) * head_dim)
                v_rows = slice(2 * channels + h * head_dim, 2 * channels + (h + 1) * head_dim)
            else:
                q = q_global[b, h, token]
                k_rows = rows
                v_rows = slice(channels + h * head_dim, channels + (h + 1) * head_dim)
            logits = []
            for my, mx in members:
                k = y[b, my, mx] @ weight[k_rows].T + bias[k_rows]
                offset = (py - my + wh - 1) * (2 * ww - 1) + (px - mx + ww - 1)
                logits.append(q @ k / head_dim**0.5 + attn.relative_position_bias_table[offset, h])
            p = torch.softmax(torch.stack(logits), dim=0)
            values = torch.stack([y[b, my, mx] @ weight[v_rows].T + bias[v_rows] for my, mx in members])
            per_head.append(p @ values)
        out[b, py, px] = attn.proj(torch.cat(per_head))
    x = x + out
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("global_query", [False, True])
@pytest.mark.parametrize("window", [(2, 2), (2, 3)])
def test_block_attention_equals_a_naive_per_pixel_computation(global_query, window):
    torch.manual_seed(0)
    block = GCViTBlock(8, 2, window, mlp_ratio=2, drop_path=0.0, global_query=global_query).eval()
    x = torch.randn(2, 2 * window[0], 2 * window[1], 8)
    q_global = torch.randn(2, 2, window[0] * window[1], 4) if global_query else None
    with torch.no_grad():
        ours = block(x, q_global if global_query else torch.empty(0))
        naive = naive_block(block, x, q_global)
    torch.testing.assert_close(ours, naive, atol=1e-5, rtol=1e-5)


def test_global_query_is_the_pooled_map_split_into_heads_row_major():
    torch.manual_seed(0)
    generator = GlobalQueryGen(8, num_heads=2, n_pools=2).eval()
    x = torch.randn(3, 8, 12, 8)
    with torch.no_grad():
        pooled = generator.to_q_global(x)
        q = generator(x)
    assert pooled.shape == (3, 8, 3, 2) and q.shape == (3, 2, 6, 4)
    for b, h, t, d in itertools.product(range(3), range(2), range(6), range(4)):
        assert q[b, h, t, d] == pooled[b, h * 4 + d, t // 2, t % 2]


def test_windows_follow_the_official_rule_and_generalise_per_axis():
    assert level_windows((224, 224)) == [(7, 7), (7, 7), (14, 14), (7, 7)]
    assert level_windows((256, 256)) == [(8, 8), (8, 8), (16, 16), (8, 8)]
    assert level_windows((96, 160)) == [(3, 5), (3, 5), (6, 10), (3, 5)]


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=False)


def test_official_weights_reproduce_the_golden_output(golden):
    network = build_official_network(3, 3).eval()
    mapping, unused = official_key_map(golden["state_dict"], network)
    assert unused == [] and len(mapping) == len(golden["state_dict"])
    own = network.state_dict()
    for official, ours in mapping.items():
        assert own[ours].shape == golden["state_dict"][official].shape, official
    index = "model.levels.2.blocks.1.attn.relative_position_index"
    assert torch.equal(own[mapping[index]], golden["state_dict"][index])
    missing, unexpected = network.load_state_dict(
        {mapping[k]: v for k, v in golden["state_dict"].items()}, strict=False
    )
    assert unexpected == [] and all(name.startswith("decoder.seg_heads.") for name in missing)
    assert "decoder.seg_heads.3.weight" not in missing
    with torch.no_grad():
        output = network(golden["input"])
    tolerance = 1e-4 * max(1.0, golden["output"].abs().max().item())
    assert output.shape == golden["output"].shape
    assert (output - golden["output"]).abs().max().item() <= tolerance


def test_official_one_channel_network_has_the_official_shapes_and_repeats_the_image(golden):
    network = build_official_network(1, 3).eval()
    mapping, unused = official_key_map(golden["state_dict"], network)
    assert unused == []
    network.load_state_dict({mapping[k]: v for k, v in golden["state_dict"].items()}, strict=False)
    gray = golden["input"][:, :1]
    with torch.no_grad():
        torch.testing.assert_close(network(gray), network_3ch_output(golden, gray.repeat(1, 3, 1, 1)))


def network_3ch_output(golden, x):
    network = build_official_network(3, 3).eval()
    mapping, _ = official_key_map(golden["state_dict"], network)
    network.load_state_dict({mapping[k]: v for k, v in golden["state_dict"].items()}, strict=False)
    return network(x)


@pytest.fixture(scope="module")
def published_mlp4():
    return GCtxUNet(3, 3, mlp_ratio=4.0, deep_supervision=True).eval()


def test_published_mlp4_counts(published_mlp4):
    network = published_mlp4
    assert core_parameters(network) == 14_081_304
    bias_tables = sum(p.numel() for n, p in network.named_parameters() if n.endswith("relative_position_bias_table"))
    assert bias_tables == 32_792
    assert core_parameters(network) - bias_tables == 14_048_512  # the published (thop) figure
    network.decoder.deep_supervision = False
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(torch.zeros(1, 3, 224, 224))
    network.decoder.deep_supervision = True
    assert abs(counter.get_total_flops() - 6_707_410_944) <= 0.01 * 6_707_410_944


@pytest.mark.parametrize(("num_classes", "expected"), [(3, 12_341_784), (9, 12_342_168), (1, 12_341_656)])
def test_official_mlp3_parameter_counts(num_classes, expected):
    assert core_parameters(GCtxUNet(3, num_classes, mlp_ratio=3.0)) == expected


@pytest.mark.parametrize("patch", [(64, 64), (96, 160), (48, 80), (40, 72)])
def test_any_2d_patch_gives_input_sized_outputs_at_the_declared_scales(patch):
    network = GCtxUNet(2, 4, patch_size=patch, embed_dim=16, deep_supervision=True).eval()
    with torch.no_grad():
        outputs = network(torch.randn(2, 2, *patch))
    expected = [tuple(round(p * s) for p in patch) for s in (1, 1 / 4, 1 / 8, 1 / 16)]
    assert [tuple(o.shape[2:]) for o in outputs] == expected
    assert all(o.shape[:2] == (2, 4) for o in outputs)
    assert network.deep_supervision_scales == [[1.0, 1.0], [0.25, 0.25], [0.125, 0.125], [0.0625, 0.0625]]


def test_contract_encoder_decoder_features_deepcopy_and_deep_supervision_head():
    torch.manual_seed(0)
    network = GCtxUNet(1, 3, patch_size=(64, 96), embed_dim=16, deep_supervision=True).eval()
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        skips = network.encoder(x)
        assert [tuple(s.shape) for s in skips] == [(2, 16, 16, 24), (2, 32, 8, 12), (2, 64, 4, 6), (2, 128, 2, 3)]
        ds_logits, features = network.decoder(skips, return_features=True)
        assert features.shape == (2, 16, 64, 96)
        clone = copy.deepcopy(network.decoder)
        clone.deep_supervision = False
        plain = clone(skips)
    torch.testing.assert_close(ds_logits[0], plain)
    torch.testing.assert_close(plain, network.decoder.seg_heads[-1](features))


def test_wrong_input_size_and_3d_patches_are_refused_with_clear_messages():
    network = GCtxUNet(1, 2, patch_size=(64, 64), embed_dim=16)
    with pytest.raises(ValueError, match=r"built for patches of \(64, 64\)"):
        network(torch.randn(1, 1, 96, 64))
    with pytest.raises(ValueError, match="2D network"):
        GCtxUNet(1, 2, patch_size=(32, 64, 64))
    setting = setting_from_preset("3d_96")
    with pytest.raises(ValueError, match=r"GCtx-UNet is a 2D network.*nnUNetTrainerGCTUNet"):
        nnUNetTrainerGCTxUNet.build_network_architecture(
            setting.plans_manager, setting.configuration_manager, 1, 2, True
        )


def test_trainers_build_the_plans_patch_with_mlp_4_by_default_and_3_selectable():
    setting = setting_from_preset("2d_224")
    args = (setting.plans_manager, setting.configuration_manager, 3, 3, False)
    assert core_parameters(nnUNetTrainerGCTxUNet.build_network_architecture(*args)) == 14_081_304
    assert core_parameters(nnUNetTrainerGCTxUNet_MLP3.build_network_architecture(*args)) == 12_341_784
    assert build_gctx_unet(4.0, *args).encoder.patch_size == (224, 224)


def gcvit_checkpoint_from(network: GCtxUNet) -> dict[str, torch.Tensor]:
    """A synthetic GC-ViT classifier state dict (GC-ViT names, random values) with ImageNet-only extras."""
    inverse = {ours: official for official, ours in OFFICIAL_MODULES.items() if ours.startswith("encoder.")}
    state = {}
    for name, tensor in network.state_dict().items():
        prefix = next((p for p in inverse if name.startswith(p + ".")), None)
        if prefix is not None:
            state[inverse[prefix] + name[len(prefix) :]] = torch.randn_like(tensor.float()).to(tensor.dtype)
    state["levels.2.blocks.2.norm1.weight"] = torch.randn(256)  # xxtiny has 6 blocks at level 2
    state["head.weight"] = torch.randn(1000, 512)
    return state


def test_pretrained_initialisation_matches_names_and_shapes_and_mirrors_the_encoder(tmp_path, monkeypatch):
    source = GCtxUNet(3, 3, mlp_ratio=3.0)
    state = gcvit_checkpoint_from(source)
    state = {k: v for k, v in state.items() if not k.endswith("relative_position_index")}
    path = tmp_path / "gcvit_xxtiny.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 300}, path)
    monkeypatch.setenv(PRETRAINED_VARIABLE, str(path))
    network = GCtxUNet(3, 3, mlp_ratio=3.0)
    initialise_from_environment(PRETRAINED_VARIABLE, network, load_gcvit_encoder_weights, log=lambda message: None)
    own = network.state_dict()
    assert torch.equal(own["encoder.patch_embed.proj.weight"], state["patch_embed.proj.weight"])
    assert torch.equal(own["encoder.norm.weight"], state["norm.weight"])
    for i in range(4):
        encoder_fc1 = state[f"levels.{i}.blocks.0.mlp.fc1.weight"]
        assert torch.equal(own[f"encoder.levels.{i}.blocks.0.mlp.fc1.weight"], encoder_fc1)
        assert torch.equal(own[f"decoder.layers_up.{3 - i}.blocks.0.mlp.fc1.weight"], encoder_fc1)
        gq = f"levels.{i}.q_global_gen.to_q_global.0.conv.0.weight"
        assert torch.equal(own[f"decoder.layers_up.{3 - i}.{gq.split('.', 2)[2]}"], state[gq])
    untouched = GCtxUNet(3, 3, mlp_ratio=3.0).state_dict()
    assert own["decoder.concat_back_dim.1.weight"].shape == untouched["decoder.concat_back_dim.1.weight"].shape
    assert not torch.equal(own["decoder.up.conv_up.expansion.weight"], state["patch_embed.proj.weight"][:1])

    mlp4 = GCtxUNet(3, 3, mlp_ratio=4.0)
    loaded, skipped = load_gcvit_encoder_weights(mlp4, state)
    assert "levels.0.blocks.0.mlp.fc1.weight" in skipped and "head.weight" in skipped
    assert "levels.2.blocks.2.norm1.weight" in skipped
    assert "encoder.levels.0.blocks.0.attn.qkv.weight" in loaded


def test_pretrained_three_channel_embedding_is_summed_for_gray_input_and_missing_files_fail(tmp_path, monkeypatch):
    state = gcvit_checkpoint_from(GCtxUNet(3, 3, patch_size=(64, 64), embed_dim=16))
    gray = GCtxUNet(1, 3, patch_size=(64, 64), embed_dim=16)
    load_gcvit_encoder_weights(gray, state)
    expected = state["patch_embed.proj.weight"].sum(dim=1, keepdim=True)
    torch.testing.assert_close(gray.encoder.patch_embed.proj.weight.detach(), expected)
    monkeypatch.setenv(PRETRAINED_VARIABLE, str(tmp_path / "absent.pth"))
    with pytest.raises(FileNotFoundError, match=PRETRAINED_VARIABLE):
        initialise_from_environment(PRETRAINED_VARIABLE, gray, load_gcvit_encoder_weights)


def test_benchmark_row_of_gctx_unet_in_3d_names_the_reason():
    row = measure_trainer("nnUNetTrainerGCTxUNet", setting_from_preset("3d_96"), "cpu", warmup=0, repeats=1, threads=1)
    assert row["error"] is not None and "GCtx-UNet is a 2D network" in row["error"]
