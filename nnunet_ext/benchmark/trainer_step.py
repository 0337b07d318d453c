"""A trainer's own ``train_step`` on a fixed batch, outside nnU-Net's data pipeline.

The trainer is built and initialised the way ``nnUNetv2_train`` builds it (its own networks, optimizers, loss and, for
a semi-supervised trainer, every extra network and state), from the setting's plans and a ``dataset.json`` with its
channel and class counts, in scratch ``nnUNet_preprocessed``/``nnUNet_results`` folders of the calling process.
Each call of the returned step is one real ``trainer.train_step``: the supervised step of nnU-Net, or the scheme step
of :class:`~nnunet_ext.trainers.semi_supervised.nnUNetTrainerSemiSupervisedBase` (labeled samples first, the
unlabeled stream replaced by the batch's unlabeled samples, ramped weights at full value).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.benchmark.presets import BenchmarkSetting
from nnunet_ext.trainers.semi_supervised import nnUNetTrainerSemiSupervisedBase

#: file ending of the placeholder case that lets nnU-Net infer its dataset class in ``initialize``
_PLACEHOLDER_CASE = "placeholder.b2nd"


def benchmark_dataset_json(setting: BenchmarkSetting) -> dict:
    """A ``dataset.json`` with the setting's channels and classes (background + ``num_classes - 1`` labels)."""
    return {
        "channel_names": {str(i): f"channel{i}" for i in range(setting.input_channels)},
        "labels": {"background": 0, **{f"class{k}": k for k in range(1, setting.num_classes)}},
        "numTraining": 0,
        "file_ending": ".nii.gz",
    }


def initialised_trainer(
    trainer_class: type[nnUNetTrainer], setting: BenchmarkSetting, device: torch.device, compile: bool | None = None
) -> nnUNetTrainer:
    """``trainer_class`` built on the setting's plans (its batch size) and initialised, in scratch nnU-Net folders
    removed when the process exits; the process's environment is left as it was.

    Args:
        compile: whether ``initialize`` compiles the networks (``_do_i_compile``), on any device; None: nnU-Net's
            choice (on CUDA unless ``nnUNet_compile`` says otherwise, never on the CPU).
    """
    if compile is not None:
        trainer_class = type(trainer_class.__name__, (trainer_class,), {"_do_i_compile": lambda self: compile})
    scratch = Path(tempfile.mkdtemp(prefix="nnunet_ext_benchmark_"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    plans = copy.deepcopy(setting.plans)
    plans["configurations"][setting.configuration]["batch_size"] = setting.batch_size
    plans["continue_training"] = False
    data_identifier = setting.configuration_manager.data_identifier
    folder = scratch / "preprocessed" / plans["dataset_name"] / data_identifier
    folder.mkdir(parents=True)
    (folder / _PLACEHOLDER_CASE).touch()
    with _environment(nnUNet_preprocessed=str(scratch / "preprocessed"), nnUNet_results=str(scratch / "results")):
        trainer = trainer_class(plans, setting.configuration, 0, benchmark_dataset_json(setting), device)
        trainer.initialize()
    return trainer


@contextlib.contextmanager
def _environment(**variables: str) -> Iterator[None]:
    """``variables`` set in ``os.environ`` inside the block, the previous values restored after it."""
    previous = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def deep_supervision_targets(trainer: nnUNetTrainer, batch_size: int, num_classes: int) -> list[torch.Tensor]:
    """Random label maps (B, 1, *S_k) at each of the trainer's deep-supervision scales (full resolution first)."""
    patch = trainer.configuration_manager.patch_size
    scales = trainer._get_deep_supervision_scales() or [[1.0] * len(patch)]
    return [
        torch.randint(0, num_classes, (batch_size, 1, *[round(p * s) for p, s in zip(patch, scale)]))
        for scale in scales
    ]


def trainer_train_step(
    trainer: nnUNetTrainer,
    data: torch.Tensor,
    num_classes: int,
    autocast_dtype: torch.dtype | None = None,
    global_iteration: int | None = None,
    initialise_scheme_state: bool = True,
) -> Callable[[], dict]:
    """One real ``trainer.train_step`` on ``data`` (B, C, *S) per call, with random targets.

    A semi-supervised trainer takes its labeled share of ``data`` (:meth:`batch_composition`) with targets and the
    rest as its unlabeled batch, at ``global_iteration`` (default: its ``rampup_end``, every ramped weight at full
    value).

    Args:
        autocast_dtype: run the step under ``torch.autocast`` of the data's device with this dtype, as nnU-Net runs
            it on CUDA (where its own autocast then takes this dtype instead of float16); float16 on a device
            where the trainer has no GradScaler gets one, as nnU-Net creates on CUDA.
        initialise_scheme_state: initialise a scheme's state from the labeled targets' class counts (False: the
            caller did, e.g. with real values before tracing the step on fake tensors).
    """
    trainer.network.train()
    targets = deep_supervision_targets(trainer, data.shape[0], num_classes)
    if isinstance(trainer, nnUNetTrainerSemiSupervisedBase):
        for network in trainer.extra_networks.values():
            network.train()
        num_labeled = trainer.labeled_batch_size
        if num_labeled >= data.shape[0]:
            raise ValueError(f"{type(trainer).__name__} needs unlabeled samples: batch {data.shape[0]}")
        unlabeled = {"data": data[num_labeled:], "keys": [f"unlabeled{i}" for i in range(data.shape[0] - num_labeled)]}
        trainer.dataloader_unlabeled = itertools.repeat(unlabeled)
        if initialise_scheme_state:
            trainer.initialise_scheme_state(
                torch.bincount(targets[0][:num_labeled].flatten(), minlength=num_classes).float()
            )
    else:
        num_labeled = data.shape[0]
    batch = {
        "data": data[:num_labeled],
        "target": [t[:num_labeled].to(data.device) for t in targets],
        "keys": [f"labeled{i}" for i in range(num_labeled)],
    }

    if autocast_dtype == torch.float16 and trainer.grad_scaler is None:
        trainer.grad_scaler = torch.amp.GradScaler(data.device.type)
    precision = contextlib.nullcontext() if autocast_dtype is None else torch.autocast(data.device.type, autocast_dtype)

    def step() -> dict:
        if isinstance(trainer, nnUNetTrainerSemiSupervisedBase):
            trainer.global_iteration = trainer.rampup_end if global_iteration is None else global_iteration
        with precision:
            return trainer.train_step(batch)

    return step
