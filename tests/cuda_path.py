"""What nnU-Net does on CUDA, forced on the CPU for tests: ``torch.compile`` (inductor, CPU code generation),
float16 autocast with a GradScaler, bfloat16 autocast; and one real ``train_step`` of a trainer in such a mode.

nnU-Net 2.8.1 compiles only where ``_do_i_compile()`` says so (never on the CPU) and autocasts only on CUDA
(``autocast(...) if device.type == "cuda" else dummy_context()``): the tests patch exactly those two places, and give
the trainer the GradScaler nnU-Net creates on CUDA. Nothing of nnunet_ext is changed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nnunet_ext.trainers.semi_supervised as semi_supervised_module
from nnunet_ext.benchmark.presets import BenchmarkPreset, BenchmarkSetting, plans_for_preset
from nnunet_ext.benchmark.trainer_step import initialised_trainer, trainer_train_step

MODES = ("eager", "compiled", "float16", "bfloat16")
AUTOCAST_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
#: steps a GradScaler (initial scale 2**16, halved per overflow) may skip before its first taken step
MAX_SKIPPED_STEPS = 16


def small_setting(patch_size: tuple[int, ...], batch_size: int = 4, channels: int = 1, classes: int = 3):
    """A one-configuration plans setting with nnU-Net's default network for a small patch."""
    name = "small_" + "x".join(map(str, patch_size))
    plans = plans_for_preset(name, BenchmarkPreset(patch_size, batch_size, channels, classes))
    return BenchmarkSetting(name, plans, name, batch_size, channels, classes)


def force_cuda_path(monkeypatch: pytest.MonkeyPatch, mode: str, backend: str = "inductor") -> None:
    """Make nnU-Net's CPU training take the CUDA path of ``mode``: ``compiled`` (``_do_i_compile`` on, with
    ``backend``), ``float16``/``bfloat16`` (autocast on the CPU device where nnU-Net would autocast on CUDA);
    ``eager`` changes nothing."""
    if mode == "compiled":
        compile_like_nnunet_on_cuda(monkeypatch, backend)
    elif mode in AUTOCAST_DTYPES:
        dtype = AUTOCAST_DTYPES[mode]
        for module in (nnunet_trainer_module, semi_supervised_module):
            monkeypatch.setattr(module, "dummy_context", lambda: torch.autocast("cpu", dtype=dtype))
        monkeypatch.setattr(F, "conv3d", functools.partial(conv3d_padded_explicitly, F.conv3d))


def conv3d_padded_explicitly(conv3d, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``conv3d`` with its zero padding applied by ``F.pad`` first: the same values and gradients. torch 2.13's CPU
    oneDNN computes the reduced-precision weight gradient of a padded 3D convolution from memory out of bounds when
    the kernel exceeds the input: NaN, values near 1e33 or a crash in about one call in three (measured here for
    ``Conv3d(128, 1, 7, padding=3)`` on a (4, 128, 4, 8, 8) bfloat16 input, the shape of GCT-UNet's spatial gate on
    its coarsest decoder level; unpadded, 2D and float32 are not affected). nnU-Net autocasts only on CUDA, where
    cuDNN computes these convolutions: a workaround of the CPU emulation, not of nnunet_ext."""
    if isinstance(padding, str) or not any(padding := (padding,) * 3 if isinstance(padding, int) else padding):
        return conv3d(input, weight, bias, stride, padding, dilation, groups)
    pads = [p for p in reversed(padding) for _ in range(2)]
    return conv3d(F.pad(input, pads), weight, bias, stride, 0, dilation, groups)


@dataclass
class StepResult:
    loss: float
    gradient_norm: float
    terms: dict[str, float]
    parameters_finite: bool
    skipped_steps: int = 0


def spread_layer_norm_affine(network: nn.Module) -> None:
    """Give every LayerNorm of ``network`` trained-like affine values: weight ~ N(1, 0.2), bias ~ N(0, 0.2).

    At initialisation (weight 1, bias 0) the channel mean of a LayerNorm output is float rounding, about 1e-8 at every
    position. GCtx-UNet's skips are such outputs, and MGCC's feature dropout thresholds exactly that channel mean
    (``mean_c(x) < 0.7..0.9 * max``): its mask is then drawn from rounding, which any other summation order (a compiled
    kernel) redraws, so a compiled step cannot equal the eager one there. With spread affine values the channel mean
    carries the features, as after some training, and the comparison is meaningful again.
    """
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)


def one_train_step(
    trainer_class: type, setting: BenchmarkSetting, mode: str, seed: int = 0, spread_layer_norms: bool = False
) -> StepResult:
    """Build ``trainer_class`` (seeded) and run one real ``train_step`` in ``mode`` (already forced with
    :func:`force_cuda_path`): its loss and logged terms, and the gradient norm over every trained network (with a
    GradScaler, of the first step it does not skip). ``spread_layer_norms``: :func:`spread_layer_norm_affine` first."""
    torch.manual_seed(seed)
    trainer = initialised_trainer(trainer_class, setting, torch.device("cpu"))
    if spread_layer_norms:
        spread_layer_norm_affine(trainer.network)
    if mode == "float16":
        trainer.grad_scaler = torch.amp.GradScaler("cpu")
    data = torch.randn(setting.batch_size, setting.input_channels, *setting.patch_size)
    step = trainer_train_step(trainer, data, setting.num_classes)
    scale = trainer.grad_scaler.get_scale() if trainer.grad_scaler is not None else None
    torch.manual_seed(seed + 1)
    output = step()
    loss, terms = float(output["loss"]), dict(output.get("loss_terms", {}))
    skipped = 0
    while trainer.grad_scaler is not None and trainer.grad_scaler.get_scale() < scale:
        # the GradScaler skipped the step (its scaled gradients overflowed float16) and lowered its scale, as on
        # CUDA in nnU-Net's first steps; the gradients checked are those of the first step it takes
        scale = trainer.grad_scaler.get_scale()
        skipped += 1
        assert skipped <= MAX_SKIPPED_STEPS, f"the GradScaler skipped {skipped} steps in a row"
        step()
    networks = [trainer.network, *getattr(trainer, "extra_networks", {}).values()]
    gradients = [p.grad.float() for network in networks for p in network.parameters() if p.grad is not None]
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in gradients))
    finite = all(bool(torch.isfinite(p).all()) for network in networks for p in network.parameters())
    return StepResult(loss, norm, terms, finite, skipped)


def compile_like_nnunet_on_cuda(monkeypatch: pytest.MonkeyPatch, backend: str = "inductor") -> None:
    """``_do_i_compile()`` on, as on CUDA, with ``torch.compile`` using ``backend`` (``"eager"``: dynamo's tracing
    and guards without code generation, for tests of what tracing keeps or misses)."""
    compile_ = torch.compile
    monkeypatch.setattr(nnunet_trainer_module.nnUNetTrainer, "_do_i_compile", lambda self: True)
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: compile_(model, backend=backend, **kwargs))
