"""The benchmark machinery: presets reproduce nnU-Net's default network; measurements are complete and sane."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from torch import nn

from nnunet_ext.benchmark import gpu_steps
from nnunet_ext.benchmark.measure import (
    EAGER,
    FLOP_FORMULAS,
    StepMode,
    count_flops,
    forward_backward_ms,
    forward_parameter_count,
    graph_breaks,
    measure_trainer,
    micro_benchmark_arguments,
    step_gflops,
)
from nnunet_ext.benchmark.op_classes import OP_CLASSES, op_class_breakdown
from nnunet_ext.benchmark.presets import (
    BenchmarkPreset,
    BenchmarkSetting,
    plans_for_preset,
    setting_from_plans,
    setting_from_preset,
)
from nnunet_ext.benchmark.trainer_step import initialised_trainer, trainer_train_step
from nnunet_ext.cli.benchmark import (
    format_graph_break_table,
    format_mode_table,
    format_op_class_table,
    format_scheme_table,
    format_table,
    run_benchmark,
    step_modes,
)
from nnunet_ext.trainers.guidednet import nnUNetTrainerGuidedNet_CMUNeXt


def test_preset_2d_256_is_nnunets_default_network_of_the_reference():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    setting = setting_from_preset("2d_256")
    network = nnUNetTrainer.build_network_architecture(
        setting.plans_manager, setting.configuration_manager, 3, 2, False
    )
    assert sum(p.numel() for p in network.parameters()) == 33_472_396
    assert len(setting.configuration_manager.pool_op_kernel_sizes) == 7


def test_anisotropic_preset_pools_like_nnunet():
    strides = setting_from_preset("3d_aniso").configuration_manager.pool_op_kernel_sizes
    assert list(strides[1]) == [1, 2, 2] and list(strides[2]) == [2, 2, 2]


def test_measurement_of_a_registered_trainer():
    setting = setting_from_preset("2d_256", batch_size=1)
    row = measure_trainer("nnUNetTrainerCMUNeXt_S", setting, "cpu", warmup=0, repeats=1, threads=1)
    assert row["error"] is None and row["network"] == "CMUNeXt"
    assert row["params_forward"] == 417_514
    assert row["params"] > row["params_forward"]
    assert abs(row["gflops"] - 2.0258) < 0.01
    # forward with deep-supervision heads, then backward (input gradients and weight gradients, the stem's input
    # gradient excepted): a little under 3x the forward
    assert 2.9 * row["gflops"] < row["train_step_gflops"] < 3 * row["gflops"]
    assert row["forward_ms"] > 0 and row["train_step_ms"] > 0 and row["peak_memory_mb"] > 0


@pytest.mark.parametrize("groups", [1, 2, 16])
def test_step_flops_count_each_convolution_gradient_as_one_forward(groups):
    conv = nn.Conv2d(16, 32, 5, padding=2, groups=groups)
    x = torch.randn(2, 16, 12, 10, requires_grad=True)
    forward = 2 * 2 * 32 * (16 // groups) * 5 * 5 * 12 * 10  # 2 FLOPs per multiply-add, per output value
    assert count_flops(conv, x) == forward
    assert step_gflops(lambda: conv(x).sum().backward()) * 1e9 == pytest.approx(3 * forward)
    x.requires_grad_(False)  # no input gradient: forward + weight gradient
    assert step_gflops(lambda: conv(x).sum().backward()) * 1e9 == pytest.approx(2 * forward)


def test_nnunets_default_trainer_is_measured_on_its_own_step():
    preset = BenchmarkPreset(patch_size=(32, 32), batch_size=2, input_channels=1, num_classes=3)
    setting = BenchmarkSetting("tiny", plans_for_preset("tiny", preset), "tiny", 2, 1, 3)
    row = measure_trainer("nnUNetTrainer", setting, "cpu", warmup=0, repeats=1, threads=1)
    assert row["error"] is None and row["network"] == "PlainConvUNet" and row["train_step_ms"] > 0


def test_unknown_trainer_is_reported_not_raised():
    row = measure_trainer("nnUNetTrainerNoSuchThing", setting_from_preset("2d_256"), "cpu", 0, 1, 1)
    assert row["error"].startswith("RuntimeError") and math.isnan(row["train_step_ms"])


def test_table_ratio_is_relative_to_the_default_network():
    rows = [
        {
            "trainer": "nnUNetTrainer",
            "network": "PlainConvUNet",
            "params": 10,
            "params_forward": 9,
            "gflops": 1.0,
            "forward_ms": 10.0,
            "train_step_gflops": 3.0,
            "train_step_ms": 40.0,
            "peak_memory_mb": 5.0,
            "error": None,
        },
        {
            "trainer": "T",
            "network": "N",
            "params": 2,
            "params_forward": 2,
            "gflops": 0.5,
            "forward_ms": 5.0,
            "train_step_gflops": 1.5,
            "train_step_ms": 10.0,
            "peak_memory_mb": 1.0,
            "error": None,
        },
        {"trainer": "X", "error": "ValueError: 2D only"},
    ]
    table = format_table(rows, rows[0])
    assert "| T | N | 2 | 2 | 0.50 | 5.0 | 1.5 | 10.0 | 0.25 | 1 |" in table
    assert "not measured: ValueError: 2D only" in table


def test_plans_file_setting_takes_channels_and_classes_from_dataset_json(tmp_path):
    setting = setting_from_preset("2d_224")
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(setting.plans))
    (tmp_path / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "a", "1": "b"}, "labels": {"background": 0, "x": 1, "y": 2}})
    )
    from_plans = setting_from_plans(tmp_path / "nnUNetPlans.json", "2d_224")
    assert (from_plans.input_channels, from_plans.num_classes, from_plans.batch_size) == (2, 3, 4)
    with pytest.raises(ValueError, match="no configuration '3d_fullres'"):
        setting_from_plans(tmp_path / "nnUNetPlans.json", "3d_fullres")


def test_mgcc_is_timed_on_its_scheme_step_and_compared_with_its_backbone_trainer():
    preset = BenchmarkPreset(patch_size=(64, 64), batch_size=2, input_channels=3, num_classes=2)
    setting = BenchmarkSetting("tiny", plans_for_preset("tiny", preset), "tiny", 2, 3, 2)
    row = measure_trainer("nnUNetTrainerMGCC_CMUNeXt", setting, "cpu", warmup=0, repeats=1, threads=1)
    assert row["error"] is None and row["network"] == "MGCCNetwork"
    assert row["supervised_reference"] == "nnUNetTrainerCMUNeXt"
    assert 0 < row["same_network_supervised_ms"] < row["train_step_ms"]
    # four decoders against one: the scheme step does between 2 and 4 times the same network's supervised work
    assert 2 < row["train_step_gflops"] / row["same_network_supervised_gflops"] < 4
    # inference runs encoder + ConvMixer chain + main decoder: CMUNeXt's 3,149,185 (1 class) + 1 more class head
    # channel + 3 x 3 ConvMixer layers on CMUNeXt's 256 bottleneck channels
    convmixer = 9 * ((49 + 1) * 256 + 2 * 256 + (256 + 1) * 256 + 2 * 256)
    assert row["params_forward"] == 3_149_185 + 17 + convmixer


def test_guidednet_is_timed_on_the_trainers_own_step_with_both_networks_at_full_ramp_weight():
    preset = BenchmarkPreset(patch_size=(32, 32), batch_size=4, input_channels=1, num_classes=3)
    setting = BenchmarkSetting("tiny", plans_for_preset("tiny", preset), "tiny", 4, 1, 3)
    environment = dict(os.environ)
    trainer = initialised_trainer(nnUNetTrainerGuidedNet_CMUNeXt, setting, torch.device("cpu"))
    assert dict(os.environ) == environment
    step = trainer_train_step(trainer, torch.randn(4, 1, 32, 32), setting.num_classes)
    networks = [trainer.network, trainer.network2]
    before = [[p.detach().clone() for p in network.parameters()] for network in networks]
    output = step()
    # the scheme's own step: its loss terms, the consistency ramp at its published full weight, both networks trained
    assert output["loss_terms"]["consistency_weight"] == pytest.approx(0.1)
    assert {"supervised1", "supervised2", "ktcps", "gmm1", "gmm_u2"} <= set(output["loss_terms"])
    for network, old in zip(networks, before):
        assert any(not torch.equal(p, q) for p, q in zip(network.parameters(), old))
    assert math.isfinite(float(output["loss"]))
    assert trainer.global_iteration == trainer.rampup_iterations + 1 == 30_001


def test_scheme_table_compares_with_the_same_network_and_with_the_supervised_reference():
    def row(trainer, step, same=math.nan, reference=None):
        return {"trainer": trainer, "train_step_ms": step, "peak_memory_mb": 300.0, "error": None,
                "same_network_supervised_ms": same, "supervised_reference": reference,
                "train_step_gflops": 2 * step, "same_network_supervised_gflops": 5 * same}  # fmt: skip

    rows = [row("nnUNetTrainerCMUNeXt", 20.0), row("nnUNetTrainerMGCC_CMUNeXt", 50.0, 25.0, "nnUNetTrainerCMUNeXt"),
            row("nnUNetTrainerMGCC", 90.0, 30.0)]  # fmt: skip
    table = format_scheme_table(rows)
    assert (
        "| nnUNetTrainerMGCC_CMUNeXt | 50.0 | 25.0 | 2.00 | 0.80 | nnUNetTrainerCMUNeXt | 20.0 | 2.50 | 300 |" in table
    )
    assert "| nnUNetTrainerMGCC | 90.0 | 30.0 | 3.00 | 1.20 | - | - | - | 300 |" in table
    assert not any(line.startswith("| nnUNetTrainerCMUNeXt |") for line in table.splitlines())  # not a scheme
    assert format_scheme_table(rows[:1]) == ""


def die_while_measuring(trainer: str, *args) -> dict:
    """Stands in for a measuring process killed for memory."""
    if trainer == "killed":
        os._exit(137)
    return {"trainer": trainer, "error": None}


def test_a_dying_measurement_process_gives_an_error_row_and_the_benchmark_goes_on():
    setting = setting_from_preset("2d_256")
    rows = run_benchmark(["killed", "next"], setting, "cpu", 0, 1, 1, measure=die_while_measuring)
    assert rows[0]["trainer"] == "killed" and "process died" in rows[0]["error"]
    assert rows[1] == {"trainer": "next", "error": None}


class FunctionalAndUnusedWeights(nn.Module):
    """``used`` is called; ``functional``'s weight is used through F.linear (its module is never called); ``unused``
    is called but its output discarded; ``never`` is neither called nor used."""

    def __init__(self):
        super().__init__()
        self.used, self.functional, self.unused, self.never = (nn.Linear(4, 4) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.unused(x)
        return torch.nn.functional.linear(self.used(x), self.functional.weight)


def test_forward_parameter_count_takes_called_modules_and_functionally_used_weights():
    assert forward_parameter_count(FunctionalAndUnusedWeights(), torch.randn(2, 4)) == 20 + 16 + 20


class _EveryOpClass(nn.Module):
    """A dense conv, a depthwise conv, BatchNorm, attention over the pixels, LayerNorm and a Linear head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.depthwise(self.conv(x))).relu()
        tokens = self.norm(x.flatten(2).transpose(1, 2))[:, None]  # (N, 1 head, H*W, 8)
        return self.head(torch.nn.functional.scaled_dot_product_attention(tokens, tokens, tokens))


def test_op_classes_split_the_step_time_and_flops_by_kind_of_operation():
    torch.manual_seed(0)
    model = _EveryOpClass()
    x = torch.randn(2, 4, 6, 5, requires_grad=True)
    pixels = 2 * 6 * 5

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    classes = op_class_breakdown(step, FLOP_FORMULAS)
    assert list(classes) == list(OP_CLASSES)
    conv = 2 * pixels * 8 * 4 * 9  # 2 FLOPs per multiply-add
    head = 2 * pixels * 8 * 3
    # forward, input gradient and weight gradient of each: 3x their forward
    assert classes["matmul/conv"]["gflops"] * 1e9 == pytest.approx(3 * (conv + head))
    assert classes["depthwise conv"]["gflops"] * 1e9 == pytest.approx(3 * 2 * pixels * 8 * 25)
    assert classes["attention"]["gflops"] > 0 and classes["normalisation"]["gflops"] == 0
    assert all(c["ms"] > 0 for c in classes.values())
    assert sum(c["gflops"] for c in classes.values()) == pytest.approx(step_gflops(step))


def test_op_class_table_prints_milliseconds_and_gflops_per_second():
    classes = {name: {"ms": 10.0, "gflops": 0.0} for name in OP_CLASSES}
    classes["matmul/conv"] = {"ms": 20.0, "gflops": 3.0}
    rows = [{"trainer": "T", "error": None, "op_classes": classes}, {"trainer": "X", "error": "E"}]
    table = format_op_class_table(rows).splitlines()
    assert table[0].startswith("| trainer | matmul/conv ms | matmul/conv GFLOP/s | attention ms |")
    assert table[2] == "| T | 20 | 150 | 10 | - | 10 | 10 | 10 | 60 |"
    assert len(table) == 3


def test_forward_backward_ms_resets_gradients_between_runs():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    x = torch.randn(4, 5)
    assert forward_backward_ms(layer, x, repeats=3) > 0
    # one warm-up and three timed runs: the gradient is that of a single run, not the sum of four
    torch.testing.assert_close(layer.weight.grad, x.sum(0).expand(3, 5))


def test_micro_benchmark_arguments_set_the_torch_threads():
    threads = torch.get_num_threads()
    try:
        args = micro_benchmark_arguments("doc", ["--threads", "1", "--repeats", "7"])
        assert (args.threads, args.repeats, torch.get_num_threads()) == (1, 7, 1)
    finally:
        torch.set_num_threads(threads)


def test_step_modes_add_the_requested_modes_after_the_eager_step():
    assert step_modes(False, None) == [EAGER]
    assert [mode.name for mode in step_modes(True, "bfloat16")] == [
        "eager",
        "eager+bfloat16",
        "compiled",
        "compiled+bfloat16",
    ]
    assert StepMode(amp="float16").autocast_dtype is torch.float16 and EAGER.autocast_dtype is None


def test_a_mode_run_times_the_trainers_step_under_autocast():
    preset = BenchmarkPreset(patch_size=(32, 32), batch_size=2, input_channels=1, num_classes=3)
    setting = BenchmarkSetting("tiny", plans_for_preset("tiny", preset), "tiny", 2, 1, 3)
    row = measure_trainer("nnUNetTrainerCMUNeXt_S", setting, "cpu", 0, 1, 1, StepMode(amp="bfloat16"))
    assert row["error"] is None and row["mode"] == "eager+bfloat16"
    assert row["first_step_seconds"] > 0 and row["train_step_ms"] > 0 and row["peak_memory_mb"] > 0
    assert math.isnan(row["forward_ms"]) and row["op_classes"] == {}  # a mode run measures the step only


def test_mode_table_compares_with_the_eager_step_and_the_default_network_in_the_same_mode():
    def row(trainer, mode, ms, first=float("nan")):
        return {"trainer": trainer, "mode": mode, "train_step_ms": ms, "first_step_seconds": first,
                "peak_memory_mb": 100.0, "error": None}  # fmt: skip

    rows = [
        row("nnUNetTrainer", "eager", 100.0),
        row("nnUNetTrainerGCGLE", "eager", 200.0),
        row("nnUNetTrainer", "compiled", 80.0, 30.0),
        row("nnUNetTrainerGCGLE", "compiled", 120.0, 60.0),
    ]
    table = format_mode_table(rows)
    assert "| nnUNetTrainerGCGLE | compiled | 200.0 | 120.0 | 0.60 | 1.50 | 60.0 | 100 |" in table
    assert format_mode_table(rows[:2]) == ""


class BreaksOnce(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + 1
        if float(x.sum()) > 0:  # data-dependent Python control flow: dynamo breaks the graph here
            x = x * 2
        return x - 1


def test_graph_breaks_are_counted_with_their_reasons():
    count, reasons = graph_breaks(BreaksOnce(), torch.ones(2, 3))
    assert count == 1 and len(reasons) == 1 and "test_benchmark.py" in reasons[0]
    assert graph_breaks(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), torch.ones(1, 1, 8, 8)) == (0, [])
    table = format_graph_break_table([{"trainer": "A", "graph_breaks": 1, "graph_break_reasons": ["why"]}])
    assert table.splitlines()[-1] == "| A | 1 | why |"


def test_gpu_script_needs_cuda_and_says_so(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_steps.main(["-tr", "nnUNetTrainerCMUNeXt", "--steps", "2"])
    assert exit_info.value.code == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert setting_from_preset("2d_acdc").patch_size == (256, 224)
