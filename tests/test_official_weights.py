"""Official-weights import: CMUNeXt equivalence on the golden fixtures, the converter's checks, the CLI, nnU-Net."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from nnunet_runs import SHORT_SCHEDULE
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from torch import nn

from nnunet_ext.checkpoints import extract_state_dict
from nnunet_ext.cli.convert_official_weights import main as convert_main
from nnunet_ext.networks.cmunext import CMUNEXT_VARIANTS, cmunext
from nnunet_ext.official import ARCHITECTURES, OfficialArchitecture, official_architecture
from nnunet_ext.official.convert import CONVERSION_KEY, convert_state_dict, load_official_state_dict

GOLDEN = Path(__file__).parent / "golden"


def load_golden(name: str) -> dict:
    return torch.load(GOLDEN / f"{name}.pt", map_location="cpu", weights_only=False)


def official_cmunext_shapes(variant: str, input_channels: int, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the official ``CMUNeXt`` state dict, in registration order, from its constructor."""
    dims, depths, kernels = (getattr(CMUNEXT_VARIANTS[variant], a) for a in ("dims", "depths", "kernels"))
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, c_in: int, c_out: int, kernel: int, groups: int = 1) -> None:
        shapes[f"{name}.weight"] = (c_out, c_in // groups, kernel, kernel)
        shapes[f"{name}.bias"] = (c_out,)

    def batchnorm(name: str, channels: int) -> None:
        for buffer in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{buffer}"] = (channels,)
        shapes[f"{name}.num_batches_tracked"] = ()

    conv("stem.conv.0", input_channels, dims[0], 3)
    batchnorm("stem.conv.1", dims[0])
    stage_inputs = [dims[0], *dims[:-1]]
    for stage in range(5):
        c, prefix = stage_inputs[stage], f"encoder{stage + 1}"
        for depth in range(depths[stage]):
            conv(f"{prefix}.block.{depth}.0.fn.0", c, c, kernels[stage], groups=c)
            batchnorm(f"{prefix}.block.{depth}.0.fn.2", c)
            conv(f"{prefix}.block.{depth}.1", c, 4 * c, 1)
            batchnorm(f"{prefix}.block.{depth}.3", 4 * c)
            conv(f"{prefix}.block.{depth}.4", 4 * c, c, 1)
            batchnorm(f"{prefix}.block.{depth}.6", c)
        conv(f"{prefix}.up.conv.0", c, dims[stage], 3)
        batchnorm(f"{prefix}.up.conv.1", dims[stage])
    for level in (5, 4, 3, 2):
        c = dims[level - 2]
        conv(f"Up{level}.up.1", dims[level - 1], c, 3)
        batchnorm(f"Up{level}.up.2", c)
        conv(f"Up_conv{level}.conv.0", 2 * c, 2 * c, 3, groups=2)
        batchnorm(f"Up_conv{level}.conv.2", 2 * c)
        conv(f"Up_conv{level}.conv.3", 2 * c, 4 * c, 1)
        batchnorm(f"Up_conv{level}.conv.5", 4 * c)
        conv(f"Up_conv{level}.conv.6", 4 * c, c, 1)
        batchnorm(f"Up_conv{level}.conv.8", c)
    conv("Conv_1x1", dims[0], num_classes, 1)
    return shapes


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randint(0, 100, shape, generator=generator)
        if name.endswith("num_batches_tracked")
        else torch.rand(shape, generator=generator) + 0.5
        for name, shape in shapes.items()
    }


def run_our_network(variant: str, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    network = official_architecture(variant).build_network(x.shape[1], weights["decoder.seg_heads.3.weight"].shape[0])
    network.load_state_dict(weights)
    with torch.no_grad():
        return network.eval()(x)


def convert_file(tmp_path: Path, source: object, *options: str, name: str = "converted.pth") -> dict:
    torch.save(source, tmp_path / "official.pth")
    convert_main(["-i", str(tmp_path / "official.pth"), "-o", str(tmp_path / name), *options])
    return torch.load(tmp_path / name, weights_only=False)


@pytest.mark.parametrize("variant", ["cmunext_s", "cmunext"])
def test_golden_weights_reproduce_the_official_output(variant, tmp_path, capsys):
    golden = load_golden(variant)
    checkpoint = convert_file(tmp_path, golden["state_dict"], "--arch", variant)
    output = run_our_network(variant, checkpoint["network_weights"], golden["input"])
    tolerance = 1e-4 * max(1.0, golden["output"].abs().max().item())
    assert (output - golden["output"]).abs().max().item() <= tolerance
    printed = capsys.readouterr().out
    assert f"mapped {len(golden['state_dict'])} official tensors" in printed
    assert "unused official tensors (0): none" in printed
    record = checkpoint[CONVERSION_KEY]
    assert record["arch"] == variant and record["num_classes"] == 2 and record["unused"] == []
    assert sorted(record["mapped"]) == sorted(golden["state_dict"])
    assert set(record["initialised"]) == {f"decoder.seg_heads.{i}.{p}" for i in range(3) for p in ("weight", "bias")}


@pytest.mark.parametrize("variant", ["cmunext_s", "cmunext"])
def test_official_naming_rule_of_this_test_matches_the_golden_state_dicts(variant):
    golden = load_golden(variant)["state_dict"]
    assert [(k, tuple(v.shape)) for k, v in golden.items()] == list(official_cmunext_shapes(variant, 3, 2).items())


def test_cmunext_l_maps_every_official_tensor_of_a_synthetic_state_dict():
    official = random_state_dict(official_cmunext_shapes("cmunext_l", 3, 1))
    conversion = convert_state_dict(official_architecture("cmunext_l"), official)
    assert conversion.num_classes == 1 and sorted(conversion.mapped) == sorted(official)
    for source, target in conversion.mapped.items():
        assert torch.equal(conversion.state_dict[target], official[source])
    # depth-6 stage 4 and depth-3 stage 5: three layers per block, then the stage's conv block
    expected = {
        "encoder4.block.5.0.fn.0.weight": "encoder.stages.3.15.fn.0.weight",
        "encoder4.block.5.6.running_var": "encoder.stages.3.17.2.running_var",
        "encoder4.up.conv.0.weight": "encoder.stages.3.18.0.weight",
        "encoder5.block.2.3.bias": "encoder.stages.4.7.2.bias",
        "encoder5.up.conv.1.num_batches_tracked": "encoder.stages.4.9.1.num_batches_tracked",
        "Up5.up.1.weight": "decoder.ups.0.1.weight",
        "Up_conv2.conv.5.weight": "decoder.fusions.3.1.2.weight",
        "Conv_1x1.bias": "decoder.seg_heads.3.bias",
    }
    assert {name: conversion.mapped[name] for name in expected} == expected
    network = cmunext("cmunext_l", 3, 1)
    network.load_state_dict(conversion.state_dict)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {"lr": torch.tensor(0.1)}},
        lambda sd: {"network_weights": {f"_orig_mod.{k}": v for k, v in sd.items()}},
    ],
    ids=["plain", "state_dict", "model_with_module_prefix", "network_weights_compiled"],
)
def test_checkpoint_layouts_give_the_plain_state_dict(wrap, tmp_path):
    official = load_golden("cmunext_s")["state_dict"]
    torch.save(wrap(official), tmp_path / "checkpoint.pth")
    loaded = load_official_state_dict(tmp_path / "checkpoint.pth")
    assert list(loaded) == list(official)
    assert all(torch.equal(loaded[k], official[k]) for k in official)


def test_files_without_a_state_dict_or_with_python_objects_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"no state dict found.*found: \['epoch', 'lr'\]"):
        extract_state_dict({"epoch": 1, "lr": 0.1})
    with pytest.raises(ValueError, match="two tensors are named 'a'"):
        extract_state_dict({"a": torch.zeros(1), "module.a": torch.zeros(1)})
    official = load_golden("cmunext_s")["state_dict"]
    torch.save({"args": argparse.Namespace(lr=0.01), "state_dict": official}, tmp_path / "with_args.pth")
    with pytest.raises(ValueError, match="--unsafe-load"):
        load_official_state_dict(tmp_path / "with_args.pth")
    assert list(load_official_state_dict(tmp_path / "with_args.pth", unsafe_load=True)) == list(official)
    with pytest.raises(FileNotFoundError, match=re.escape("missing.pth")):
        load_official_state_dict(tmp_path / "missing.pth")


@pytest.mark.parametrize(
    ("arch", "replaced", "input_channels", "message"),
    [
        (
            "cmunext_s",
            {"encoder3.block.0.1.weight": (63, 16, 1, 1)},
            3,
            "official tensor encoder3.block.0.1.weight has shape (63, 16, 1, 1), but our encoder.stages.2.1.0.weight "
            "needs (64, 16, 1, 1)",
        ),
        (
            "cmunext_s",
            {},
            1,
            "official tensor stem.conv.0.weight has shape (8, 3, 3, 3), but our encoder.stem.0.weight",
        ),
        (
            "cmunext",
            {},
            3,
            "stem.conv.0.weight has shape (8, 3, 3, 3), but our encoder.stem.0.weight needs (16, 3, 3, 3)",
        ),
    ],
    ids=["changed_tensor", "other_input_channels", "other_architecture"],
)
def test_shape_mismatch_names_both_tensors(arch, replaced, input_channels, message):
    official = load_golden("cmunext_s")["state_dict"] | {name: torch.zeros(shape) for name, shape in replaced.items()}
    with pytest.raises(ValueError, match=re.escape(message)):
        convert_state_dict(official_architecture(arch), official, input_channels=input_channels)


def test_unknown_and_missing_official_tensors_are_errors_naming_them():
    official = dict(load_golden("cmunext_s")["state_dict"])
    with pytest.raises(
        ValueError, match=re.escape("neither mapped nor known to be unused: extra.weight, stem.conv.2.weight")
    ):
        convert_state_dict(
            official_architecture("cmunext_s"),
            {**official, "extra.weight": torch.zeros(1), "stem.conv.2.weight": torch.zeros(1)},
        )
    del official["encoder2.block.0.4.bias"]
    with pytest.raises(
        ValueError,
        match=r"1 tensors of our network get no official tensor: encoder\.stages\.1\.2\.0\."
        "bias",
    ):
        convert_state_dict(official_architecture("cmunext_s"), official)


def test_other_class_count_keeps_our_initialised_heads_and_loads_through_nnunet(tmp_path, capsys):
    golden = load_golden("cmunext_s")
    checkpoint = convert_file(tmp_path, golden["state_dict"], "--arch", "cmunext_s", "--num-classes", "4")
    weights = checkpoint["network_weights"]
    assert weights["decoder.seg_heads.3.weight"].shape == (4, 8, 1, 1)
    printed = capsys.readouterr().out
    assert (
        "our default initialisation for decoder.seg_heads.3: the official head has 2 classes, the network 4" in printed
    )
    assert "official head tensors not transferred (2 classes, the network 4): Conv_1x1.weight, Conv_1x1.bias" in printed
    assert checkpoint[CONVERSION_KEY]["not_transferred"] == ["Conv_1x1.weight", "Conv_1x1.bias"]
    again = convert_file(tmp_path, golden["state_dict"], "--arch", "cmunext_s", "--num-classes", "4", name="2.pth")
    assert all(torch.equal(weights[k], again["network_weights"][k]) for k in weights), "heads are seeded"

    trainer_network = cmunext("cmunext_s", 3, 4, deep_supervision=True)
    load_pretrained_weights(trainer_network, str(tmp_path / "converted.pth"))
    loaded = trainer_network.state_dict()
    for source, target in checkpoint[CONVERSION_KEY]["mapped"].items():
        assert torch.equal(loaded[target], golden["state_dict"][source])
    assert "Conv_1x1.weight" not in checkpoint[CONVERSION_KEY]["mapped"]


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    official = load_golden("cmunext_s")["state_dict"]
    (tmp_path / "converted.pth").write_text("previous")
    with pytest.raises(SystemExit, match=r"nnUNetv2_ext_convert_official_weights: error: .*already exists"):
        convert_file(tmp_path, official, "--arch", "cmunext_s")
    assert (tmp_path / "converted.pth").read_text() == "previous"
    convert_file(tmp_path, official, "--arch", "cmunext_s", "--overwrite")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_as_module_documents_every_option():
    result = subprocess.run(
        [sys.executable, "-m", "nnunet_ext.cli.convert_official_weights", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for option in (
        "--arch",
        "--input",
        "--output",
        "--num-classes",
        "--input-channels",
        "--overwrite",
        "--unsafe-load",
    ):
        assert option in result.stdout
    for name, entry in ARCHITECTURES.items():
        assert name in result.stdout and entry.trainer in result.stdout


def test_registry_has_the_issue_architectures_and_the_cli_lists_them():
    assert set(ARCHITECTURES) == {"cmunext", "cmunext_s", "cmunext_l", "gctx_unet", "gcgle"}
    with pytest.raises(ValueError, match="unknown architecture 'unet'"):
        official_architecture("unet")


def test_gctx_unet_golden_weights_reproduce_the_official_output(tmp_path):
    golden = load_golden("gctx_unet_mlp4")
    checkpoint = convert_file(tmp_path, golden["state_dict"], "--arch", "gctx_unet")
    network = official_architecture("gctx_unet").build_network(3, 3)
    network.load_state_dict(checkpoint["network_weights"])
    with torch.no_grad():
        output = network.eval()(golden["input"])
    tolerance = 1e-4 * max(1.0, golden["output"].abs().max().item())
    assert (output - golden["output"]).abs().max().item() <= tolerance


def test_gcgle_maps_every_used_official_tensor_and_lists_the_unused():
    """A synthetic state dict with the official names and shapes."""
    listing = json.loads((GOLDEN / "gcgle_r4_official_state_dict_keys.json").read_text())["tensors"]
    official = random_state_dict({entry["name"]: tuple(entry["shape"]) for entry in listing})
    conversion = convert_state_dict(official_architecture("gcgle"), official, input_channels=3, num_classes=9)
    # buffers carry no flag: they are used where their module's parameters are
    unused_modules = {entry["name"].rsplit(".", 1)[0] for entry in listing if entry.get("used_in_forward") is False}
    used = {
        entry["name"]
        for entry in listing
        if entry.get("used_in_forward")
        or (entry.get("buffer") and entry["name"].rsplit(".", 1)[0] not in unused_modules)
    }
    assert set(conversion.mapped) == used
    assert set(conversion.unused) == set(official) - used
    for source, target in conversion.mapped.items():
        landed, sent = conversion.state_dict[target].flatten(), official[source].flatten()
        same_layout = torch.equal(landed, sent)
        assert same_layout or torch.equal(landed.sort().values, sent.sort().values), f"{source} -> {target}"


class TinyNetwork(nn.Module):
    """Our side of the toy adapter: a 3x3 conv and two heads named as the network contract names them."""

    def __init__(self, input_channels: int, num_classes: int):
        super().__init__()
        self.encoder = nn.Conv2d(input_channels, 4, 3, padding=1)
        self.decoder = nn.Module()
        self.decoder.seg_heads = nn.ModuleList([nn.Conv2d(4, num_classes, 1), nn.Conv2d(4, num_classes, 1)])


def tiny_key_map(official_keys, network):
    """body.weight is stored flattened (4, 9 C); aux.* is built but unused by the toy official forward."""
    mapping = {"body.weight": "encoder.weight", "body.bias": "encoder.bias"}
    mapping |= {f"head.{p}": f"decoder.seg_heads.1.{p}" for p in ("weight", "bias")}
    transforms = {"body.weight": lambda tensor: tensor.reshape(4, -1, 3, 3)}
    unused = [key for key in official_keys if key.startswith("aux.")]
    return {k: v for k, v in mapping.items() if k in official_keys}, unused, transforms


@pytest.fixture
def tiny_architecture(monkeypatch):
    module = types.ModuleType("tiny_official_adapter")
    module.build_official_network = TinyNetwork
    module.official_key_map = tiny_key_map
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return OfficialArchitecture(module.__name__, "nnUNetTrainerTiny", "example/tiny")


def tiny_official(num_classes: int = 3) -> dict[str, torch.Tensor]:
    return {
        "body.weight": torch.randn(4, 18),
        "body.bias": torch.randn(4),
        "aux.weight": torch.randn(7),
        "head.weight": torch.randn(num_classes, 4, 1, 1),
        "head.bias": torch.randn(num_classes),
    }


def test_unused_tensors_are_reported_by_name_and_transforms_applied(tiny_architecture):
    official = tiny_official()
    conversion = convert_state_dict(tiny_architecture, official, input_channels=2)
    assert conversion.unused == ["aux.weight"] and conversion.num_classes == 3
    assert torch.equal(conversion.state_dict["encoder.weight"], official["body.weight"].reshape(4, 2, 3, 3))
    assert torch.equal(conversion.state_dict["decoder.seg_heads.1.bias"], official["head.bias"])
    assert set(conversion.initialised) == {"decoder.seg_heads.0.weight", "decoder.seg_heads.0.bias"}
    assert "unused official tensors (1): aux.weight" in conversion.summary()


def test_inconsistent_key_maps_are_errors(tiny_architecture, monkeypatch):
    module = sys.modules[tiny_architecture.module]
    monkeypatch.setattr(module, "official_key_map", lambda keys, net: ({"body.weight": "encoder.kernel"}, list(keys)))
    with pytest.raises(
        ValueError,
        match=r"both mapped and declared unused: body\.weight.*our network does not have: "
        r"body\.weight -> encoder\.kernel",
    ):
        convert_state_dict(tiny_architecture, tiny_official(), input_channels=2)
    doubled = {"body.bias": "encoder.bias", "head.bias": "encoder.bias"}
    monkeypatch.setattr(module, "official_key_map", lambda keys, net: (doubled, []))
    with pytest.raises(
        ValueError,
        match=re.escape("several official tensors mapped onto one of ours: encoder.bias <- body.bias, head.bias"),
    ):
        convert_state_dict(tiny_architecture, {k: tiny_official()[k] for k in doubled}, input_channels=2)


def test_an_absent_adapter_module_is_a_clear_error():
    absent = OfficialArchitecture("nnunet_ext.official.not_there", "nnUNetTrainerX", "example/x")
    with pytest.raises(
        RuntimeError, match=re.escape("adapter nnunet_ext.official.not_there is not part of this installation")
    ):
        absent.build_network(3, 2)


def test_fine_tuning_through_nnunet_loads_the_converted_weights(nnunet_environment, synthetic_2d, tmp_path):
    """One-channel official weights (an own run with input_channel=1) -> nnUNetv2_train -pretrained_weights."""
    env, spec, trainer = nnunet_environment, synthetic_2d, "nnUNetTrainerCMUNeXt_S"
    official = dict(load_golden("cmunext_s")["state_dict"])
    official["stem.conv.0.weight"] = official["stem.conv.0.weight"].sum(dim=1, keepdim=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in official.items()}}, tmp_path / "official.pth")
    converted = tmp_path / "converted.pth"
    printed = env.run(
        sys.executable,
        "-m",
        "nnunet_ext.cli.convert_official_weights",
        "--arch",
        "cmunext_s",
        "-i",
        str(tmp_path / "official.pth"),
        "-o",
        str(converted),
        "--input-channels",
        str(spec.num_channels),
        "--num-classes",
        "4",
    )
    assert f"-tr {trainer} -pretrained_weights {converted}" in printed

    output = env.run(
        "nnUNetv2_train",
        str(spec.dataset_id),
        "2d",
        "0",
        "-tr",
        trainer,
        "-device",
        "cpu",
        "-pretrained_weights",
        str(converted),
        extra_env=SHORT_SCHEDULE,
    )
    assert f"Loading pretrained weights from file  {converted}" in output
    assert "encoder.stem.0.weight shape torch.Size([8, 1, 3, 3])" in output
    fold = env.results / spec.folder_name / f"{trainer}__nnUNetPlans__2d" / "fold_0"
    trained = torch.load(fold / "checkpoint_final.pth", weights_only=False)["network_weights"]
    start = torch.load(converted, weights_only=False)["network_weights"]
    assert trained.keys() == start.keys()
    for name in ("encoder.stages.4.0.fn.0.weight", "decoder.fusions.0.2.0.weight"):
        change = (trained[name] - start[name]).norm() / start[name].norm()
        assert change < 0.1, f"{name} moved {change:.2f} of its norm: not trained from the converted weights"
