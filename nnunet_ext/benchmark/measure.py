"""Measurements of one trainer's network: size, FLOPs, forward latency, train-step time, peak memory.

Every trainer is measured the same way:

- ``params``: all parameters the trainer builds (deep-supervision heads included, as nnU-Net builds them);
  ``params_forward``: parameters an inference forward (deep supervision off) uses (:func:`forward_parameter_count`).
- ``gflops``: one inference forward of one patch (batch 1), counted by ``torch.utils.flop_counter.FlopCounterMode``
  (2 FLOPs per multiply-add).
- ``train_step_gflops``: one train step (below) on the batch, forward and backward, counted the same way (with
  :func:`conv_backward_flops` for convolution backward passes): the work the step cannot avoid, against which its
  time can be judged.
- ``forward_ms``: median wall time of an inference forward of a batch (eval mode, no grad).
- ``train_step_ms``: median wall time of the trainer's own ``train_step`` on a batch
  (:mod:`nnunet_ext.benchmark.trainer_step`): for a supervised trainer nnU-Net's step (forward with deep
  supervision, Dice + CE with its deep-supervision weights, backward, clipping at 12, the trainer's optimizer); for a
  semi-supervised trainer its scheme step with every network it trains, the batch's first labeled share
  (``batch_composition``) labeled and the scheme's ramped weights at full value.
- ``op_classes``: the train step's time and FLOPs by operation class (matrix products and convolutions, attention,
  depthwise convolutions, normalisation, the rest; :mod:`nnunet_ext.benchmark.op_classes`): which part of the
  step runs at what arithmetic efficiency.
- ``peak_memory_mb``: peak memory of the train steps above what the process held before the trainer was built
  (CPU: resident set size; CUDA: ``torch.cuda.max_memory_allocated``): parameters, gradients, optimizer state and
  activations.

For semi-supervised trainers ``params`` counts every network they train, and ``supervised_reference`` names their
``supervised_trainer``, the one-network supervised training they are compared with at the same total batch.
``same_network_supervised_ms`` is nnU-Net's supervised step (:func:`~nnunet_ext.trainers.steps.supervised_train_step`)
on the scheme network's inference path (``forward_main`` where the network has one, e.g. MGCC's encoder, ConvMixer
chain and main decoder) with the whole batch labeled: the cost of training that network without the scheme, the
reference of a scheme on its own network (``nnUNetTrainerMGCC``); ``same_network_supervised_gflops`` counts that
step's FLOPs, so the ratio of the two step FLOP counts is the least time ratio the scheme can reach at equal
arithmetic efficiency.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from nnunet_ext.benchmark.modes import EAGER, StepMode
from nnunet_ext.benchmark.op_classes import op_class_breakdown
from nnunet_ext.benchmark.presets import BenchmarkSetting
from nnunet_ext.benchmark.trainer_step import deep_supervision_targets, initialised_trainer, trainer_train_step
from nnunet_ext.timing import call_seconds, median_milliseconds, memory_in_use, peak_memory_mb, synchronize
from nnunet_ext.trainers.base import unwrap_module
from nnunet_ext.trainers.semi_supervised import nnUNetTrainerSemiSupervisedBase
from nnunet_ext.trainers.steps import supervised_train_step


@dataclass
class Measurement:
    trainer: str
    network: str = ""
    params: int = 0
    params_forward: int = 0
    gflops: float = float("nan")
    forward_ms: float = float("nan")
    train_step_ms: float = float("nan")
    train_step_gflops: float = float("nan")
    peak_memory_mb: float = float("nan")
    supervised_reference: str | None = None
    same_network_supervised_ms: float = float("nan")
    same_network_supervised_gflops: float = float("nan")
    op_classes: dict[str, dict[str, float]] = field(default_factory=dict)
    mode: str = "eager"
    first_step_seconds: float = float("nan")
    graph_breaks: int | None = None
    graph_break_reasons: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def graph_breaks(network: nn.Module, x: torch.Tensor) -> tuple[int, list[str]]:
    """``torch._dynamo.explain`` of one training forward of ``network`` on ``x`` (deep supervision as set): the
    number of graph breaks and their reasons. AOTAutograd compiles the backward of each forward graph as one graph,
    so the forward's breaks are those of forward + backward."""
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(network)(x)
    reasons = [
        f"{b.reason} ({b.user_stack[-1].filename}:{b.user_stack[-1].lineno})" if b.user_stack else b.reason
        for b in explanation.break_reasons
    ]
    return explanation.graph_break_count, reasons


def forward_parameter_count(network: nn.Module, x: torch.Tensor) -> int:
    """Parameters an inference forward ``network(x)`` uses, each counted once: those of every module it calls (the
    convention of the reference counts, which include e.g. GC-ViT's global-query generator of a level without a
    global block) and every other parameter its output depends on (the leaves of its autograd graph: weights used
    through ``torch.nn.functional``, as CMUNeXt's Skip-Fusion does)."""
    used: dict[int, int] = {}

    def record(module: nn.Module, args, output) -> None:
        for parameter in module.parameters(recurse=False):
            used[id(parameter)] = parameter.numel()

    handles = [module.register_forward_hook(record) for module in network.modules()]
    try:
        with torch.enable_grad():
            outputs = network(x)
    finally:
        for handle in handles:
            handle.remove()
    outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    pending = [output.grad_fn for output in outputs if output.grad_fn is not None]
    visited = set()
    while pending:
        node = pending.pop()
        if node in visited:
            continue
        visited.add(node)
        leaf = getattr(node, "variable", None)  # AccumulateGrad nodes hold the parameter they accumulate into
        if leaf is not None:
            used[id(leaf)] = leaf.numel()
        pending.extend(child for child, _ in node.next_functions if child is not None)
    return sum(used.values())


def conv_backward_flops(
    grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed, _output_padding, _groups,
    output_mask, out_shape, **kwargs
) -> int:  # fmt: skip
    """FLOPs of ``aten.convolution_backward``: the input gradient and the weight gradient (those requested by
    ``output_mask``) each cost as much as the forward convolution.

    Replaces torch 2.13's formula, which counts the weight gradient of a grouped convolution as if it were not
    grouped (``groups`` times too many: 32x for a 32-channel depthwise convolution).
    """
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


FLOP_FORMULAS = {torch.ops.aten.convolution_backward: conv_backward_flops}
"""Our FLOP formulas where torch's are wrong."""


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter with :func:`conv_backward_flops` for convolution backward passes."""
    return FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)


def count_flops(network: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), flop_counter() as counter:
        network(x)
    return counter.get_total_flops()


def step_gflops(step: Callable[[], object]) -> float:
    """GFLOPs of one call of ``step()`` (forward and backward passes it runs included)."""
    with flop_counter() as counter:
        step()
    return counter.get_total_flops() / 1e9


def forward_backward_ms(module: nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median wall milliseconds (CPU, one warm-up run) of ``module(x).sum().backward()``, the gradients of the
    module's parameters reset before each run."""

    def step() -> None:
        module.zero_grad(set_to_none=True)
        module(x).sum().backward()

    return median_milliseconds(step, torch.device("cpu"), warmup=1, repeats=repeats)


def micro_benchmark_arguments(description: str, argv: list[str] | None) -> argparse.Namespace:
    """``--threads`` (set for torch here) and ``--repeats`` of the ``python -m nnunet_ext.benchmark.*`` scripts."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; the median is printed")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args


def measure_trainer(
    trainer_name: str,
    setting: BenchmarkSetting,
    device_name: str,
    warmup: int,
    repeats: int,
    threads: int,
    mode: StepMode = EAGER,
    count_graph_breaks: bool = False,
) -> dict:
    """Measure ``trainer_name``'s network on ``setting``; meant to run in a fresh process per trainer and mode.

    Every mode measures the train step: its first call's seconds (compilation, for a compiled step), median time and
    peak memory; the eager mode also everything else (and the graph breaks of its forward with
    ``count_graph_breaks``)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    import nnunet_ext  # noqa: F401  (installs the trainer lookup when the startup hook is absent)

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device(device_name)
    measurement = Measurement(trainer_name)
    try:
        trainer_class = recursive_find_trainer_class_by_name(trainer_name)
        memory_before = memory_in_use(device)
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's citation and device lines
            trainer = initialised_trainer(trainer_class, setting, device, compile=mode.compile)
    except Exception as error:
        measurement.error = f"{type(error).__name__}: {error}"
        return measurement.as_dict()
    network = unwrap_module(trainer.network)
    networks = [network, *getattr(trainer, "extra_networks", {}).values()]
    measurement.network = getattr(network, "network_name", type(network).__name__)
    measurement.params = sum(p.numel() for net in networks for p in net.parameters())

    batch = torch.randn(setting.batch_size, setting.input_channels, *setting.patch_size, device=device)
    train_step = trainer_train_step(trainer, batch, setting.num_classes, mode.autocast_dtype)
    measurement.mode = mode.name
    time_train_step(measurement, train_step, device, memory_before, warmup, repeats)
    if mode != EAGER:
        return measurement.as_dict()
    is_scheme = isinstance(trainer, nnUNetTrainerSemiSupervisedBase)
    if is_scheme:
        supervised_trainer = trainer_class.supervised_trainer
        measurement.supervised_reference = supervised_trainer.__name__ if supervised_trainer else None
    measurement.op_classes = op_class_breakdown(train_step, FLOP_FORMULAS, partial(synchronize, device))
    # the classes partition the step's operations, with the FLOP formulas of flop_counter()
    measurement.train_step_gflops = sum(op["gflops"] for op in measurement.op_classes.values())
    if is_scheme:
        targets = [t.to(device) for t in deep_supervision_targets(trainer, setting.batch_size, setting.num_classes)]
        inference_path = getattr(network, "forward_main", network)
        same_network_step = supervised_train_step(network, batch, targets, trainer.loss, inference_path)
        measurement.same_network_supervised_ms = median_milliseconds(same_network_step, device, warmup, repeats)
        measurement.same_network_supervised_gflops = step_gflops(same_network_step)

    if count_graph_breaks:
        measurement.graph_breaks, measurement.graph_break_reasons = graph_breaks(network, batch)

    network.eval()
    network.decoder.deep_supervision = False
    with torch.no_grad():
        measurement.forward_ms = median_milliseconds(lambda: network(batch), device, warmup, repeats)
    single = batch[:1]
    measurement.params_forward = forward_parameter_count(network, single)
    measurement.gflops = count_flops(network, single) / 1e9
    return measurement.as_dict()


def time_train_step(
    measurement: Measurement,
    train_step: Callable[[], object],
    device: torch.device,
    memory_before: int,
    warmup: int,
    repeats: int,
) -> None:
    """Fill in the train step's first-call seconds (compilation, for a compiled step), median time and peak
    memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    measurement.first_step_seconds = call_seconds(train_step, device)
    measurement.train_step_ms = median_milliseconds(train_step, device, warmup, repeats)
    measurement.peak_memory_mb = peak_memory_mb(device, memory_before)
