"""Where a train step spends its time: wall time and FLOPs of the aten operations it runs, by class.

Classes: ``matmul/conv`` (matrix products and convolutions other than depthwise, the compute-bound work),
``attention`` (``scaled_dot_product_attention`` kernels), ``depthwise conv`` (convolutions with one input channel
per group), ``normalisation`` (batch/instance/layer/group norm, forward and backward) and ``other`` (elementwise
operations, copies, reductions, indexing, the loss, the optimizer). FLOPs use torch's formulas
(``torch.utils.flop_counter``) with :func:`~nnunet_ext.benchmark.measure.conv_backward_flops` for convolution
backward passes, so a class's GFLOP/s is its arithmetic efficiency.

Operations are timed one by one under a ``TorchDispatchMode`` (on CUDA with a synchronisation around each, which
removes the overlap of launches and kernels); the sum of the classes is the time spent inside operations, a little
below the step's wall time on CPU (autograd and Python run outside them).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, shape_wrapper

OP_CLASSES = ("matmul/conv", "attention", "depthwise conv", "normalisation", "other")
ARITHMETIC_CLASSES = ("matmul/conv", "attention")
MATMULS = {"mm", "addmm", "bmm", "baddbmm"}
CONVOLUTIONS = {"convolution", "convolution_backward"}
NORMALISATIONS = {
    "native_batch_norm",
    "native_batch_norm_backward",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training",
    "native_layer_norm",
    "native_layer_norm_backward",
    "native_group_norm",
    "native_group_norm_backward",
}


def op_class(func: torch._ops.OpOverload, args: tuple) -> str:
    """The class of one aten operation called with ``args``."""
    name = func.overloadpacket.__name__
    if name in CONVOLUTIONS:
        # convolution(input, weight, ..., groups) / convolution_backward(grad, input, weight, ..., groups, mask)
        x, groups = (args[0], args[8]) if name == "convolution" else (args[1], args[9])
        return "depthwise conv" if groups > 1 and groups == x.shape[1] else "matmul/conv"
    if name in MATMULS:
        return "matmul/conv"
    if "scaled_dot_product" in name:
        return "attention"
    if name in NORMALISATIONS:
        return "normalisation"
    return "other"


class OpClassTimer(TorchDispatchMode):
    """Accumulates, per class, the wall time (ms) and FLOPs of every aten operation run inside the mode."""

    def __init__(self, flop_formulas: dict | None = None, synchronize: Callable[[], None] = lambda: None):
        super().__init__()
        self.synchronize = synchronize
        self.formulas = {**flop_registry, **{op: shape_wrapper(f) for op, f in (flop_formulas or {}).items()}}
        self.milliseconds = dict.fromkeys(OP_CLASSES, 0.0)
        self.flops = dict.fromkeys(OP_CLASSES, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.synchronize()
        start = time.perf_counter()
        out = func(*args, **kwargs)
        self.synchronize()
        elapsed = time.perf_counter() - start
        name = op_class(func, args)
        self.milliseconds[name] += 1000 * elapsed
        formula = self.formulas.get(func.overloadpacket)
        if formula is not None:
            self.flops[name] += formula(*args, **kwargs, out_val=out)
        return out


def op_class_breakdown(
    step: Callable[[], object], flop_formulas: dict | None = None, synchronize: Callable[[], None] = lambda: None
) -> dict[str, dict[str, float]]:
    """``{class: {"ms": ..., "gflops": ...}}`` of one call of ``step()`` (after the caller's warm-up runs);
    ``synchronize`` waits for the device (CUDA operations run asynchronously)."""
    with OpClassTimer(flop_formulas, synchronize) as timer:
        step()
    return {name: {"ms": timer.milliseconds[name], "gflops": timer.flops[name] / 1e9} for name in OP_CLASSES}
