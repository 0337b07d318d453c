"""Training memory of a trainer, estimated without running the computation.

One real ``trainer.train_step`` (:mod:`nnunet_ext.benchmark.trainer_step`: the trainer's own networks, optimizers,
deep-supervision loss and, for a semi-supervised trainer, every extra network, head and its labeled and unlabeled
halves) runs on fake tensors (``torch._subclasses.FakeTensorMode``): every operation computes only its output's
shape and dtype, so a step at any patch and batch costs the same few seconds of Python on a CPU. The mode counts
the bytes of every storage an operation creates and frees them when the storage dies, as a caching allocator's
``max_memory_allocated`` counts them: the estimate is the peak of two steps (the second holds the optimizers'
momentum) plus the networks' parameters and buffers.

Mixed precision: the step runs under ``torch.autocast`` with bfloat16 on the CPU, whose casts follow CUDA's float16
lists (convolutions and matrix products in 16 bit, reductions and losses in 32 bit); bfloat16 and float16 tensors
have the same size, so the bytes are those of nnU-Net's float16 step. Not counted: the CUDA context, cuDNN
workspaces and the allocator's cached, unused blocks (what ``nvidia-smi`` shows beyond ``max_memory_allocated``).
"""

from __future__ import annotations

import copy
import weakref
from unittest import mock

import numpy as np
import torch
from torch._subclasses.fake_tensor import DynamicOutputShapeException, FakeTensorMode
from torch.utils._pytree import tree_leaves

from nnunet_ext.benchmark.presets import BenchmarkSetting
from nnunet_ext.benchmark.trainer_step import initialised_trainer, trainer_train_step
from nnunet_ext.trainers.semi_supervised import nnUNetTrainerSemiSupervisedBase

#: the autocast dtype of the estimate: the byte size of nnU-Net's float16 (see the module docstring)
ESTIMATE_AUTOCAST_DTYPE = torch.bfloat16


class AllocationCountingFakeMode(FakeTensorMode):
    """``FakeTensorMode`` that counts the bytes of the storages its operations create: ``allocated`` now and
    ``peak`` since entering. A storage is counted once (views and in-place results share it) and uncounted when it is
    freed. Real tensors used as inputs (the parameters) are not counted.

    Data-dependent results have no value here: ``.item()``, ``float()`` and ``bool()`` of a tensor read 1 (nonzero:
    Adam's bias correction ``1 - beta ** step`` divides by it), and
    ``bincount`` with ``minlength`` returns ``minlength`` counts (class counts of labels below it, as every caller in
    this package uses it); any other operation whose output shape depends on values raises.
    """

    def __init__(self) -> None:
        super().__init__(allow_non_fake_inputs=True)
        self.allocated = 0
        self.peak = 0
        self._live: dict[int, weakref.ref] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            return 1
        try:
            output = super().__torch_dispatch__(func, types, args, kwargs)
        except DynamicOutputShapeException:
            minlength = kwargs.get("minlength", args[2] if len(args) > 2 else 0)
            if func is not torch.ops.aten.bincount.default or not minlength:
                raise
            with self:
                output = torch.zeros(minlength, dtype=torch.int64, device=args[0].device)
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(output):
            if isinstance(tensor, torch.Tensor):
                self._count(tensor.untyped_storage(), inputs)
        return output

    def _count(self, storage: torch.UntypedStorage, inputs: set[int]) -> None:
        key = storage._cdata
        if key in inputs or key in self._live:
            return
        nbytes = storage.nbytes()
        self._live[key] = weakref.ref(storage, lambda _, key=key, nbytes=nbytes: self._free(key, nbytes))
        self.allocated += nbytes
        self.peak = max(self.peak, self.allocated)

    def _free(self, key: int, nbytes: int) -> None:
        if self._live.pop(key, None) is not None:
            self.allocated -= nbytes


def _fake_numpy(tensor: torch.Tensor, *args, **kwargs) -> np.ndarray:
    """``Tensor.numpy`` inside the estimate (``train_step`` returns its loss as an array): zeros of the shape."""
    return np.zeros(tuple(tensor.shape), dtype=np.float32)


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def benchmark_setting(plans: dict, configuration: str, dataset_json: dict, batch_size: int) -> BenchmarkSetting:
    """A benchmark setting (what :func:`~nnunet_ext.benchmark.trainer_step.initialised_trainer` builds a trainer
    from) for ``configuration`` of ``plans`` with the channels and classes of ``dataset_json``."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = copy.deepcopy(plans)
    return BenchmarkSetting(
        label=f"{plans.get('plans_name', 'plans')}:{configuration}",
        plans=plans,
        configuration=configuration,
        batch_size=batch_size,
        input_channels=len(dataset_json["channel_names"]),
        num_classes=PlansManager(plans).get_label_manager(dataset_json).num_segmentation_heads,
    )


def training_peak_bytes(
    trainer_class: type,
    plans: dict,
    configuration: str,
    dataset_json: dict,
    batch_size: int,
    autocast_dtype: torch.dtype | None = ESTIMATE_AUTOCAST_DTYPE,
) -> int:
    """Estimated peak bytes of training ``trainer_class`` with ``configuration`` of ``plans`` at ``batch_size``
    (per GPU) in nnU-Net's float16 mixed precision: parameters and buffers of every network plus the peak of the
    step's tensors (activations kept for backward, gradients, optimizer momentum, loss terms).

    Args:
        plans: nnU-Net plans dict (its configuration's patch and network are used; its batch size is not).
        dataset_json: gives the input channels and the classes.
        autocast_dtype: None estimates a float32 step (what a CPU trains; used to validate the estimate against
            measured CPU peaks, :mod:`nnunet_ext.planning.validation`).
    """
    weights, step_peak = weights_and_step_peak_bytes(
        trainer_class, plans, configuration, dataset_json, batch_size, autocast_dtype
    )
    return weights + step_peak


def weights_and_step_peak_bytes(
    trainer_class: type,
    plans: dict,
    configuration: str,
    dataset_json: dict,
    batch_size: int,
    autocast_dtype: torch.dtype | None = ESTIMATE_AUTOCAST_DTYPE,
) -> tuple[int, int]:
    """The two parts of :func:`training_peak_bytes`: parameters and buffers of every network, and the peak of the
    step's tensors."""
    setting = benchmark_setting(plans, configuration, dataset_json, batch_size)
    trainer = initialised_trainer(trainer_class, setting, torch.device("cpu"), compile=False)
    networks = [trainer.network, *getattr(trainer, "extra_networks", {}).values()]
    if isinstance(trainer, nnUNetTrainerSemiSupervisedBase):  # real values: a scheme's state may check them
        trainer.initialise_scheme_state(torch.arange(1, setting.num_classes + 1, dtype=torch.float32))
    mode = AllocationCountingFakeMode()
    with mock.patch.object(torch.Tensor, "numpy", _fake_numpy), mode:
        data = torch.empty(batch_size, setting.input_channels, *setting.patch_size)
        step = trainer_train_step(
            trainer, data, setting.num_classes, autocast_dtype=autocast_dtype, initialise_scheme_state=False
        )
        step()
        step()
    return sum(module_bytes(network) for network in networks), mode.peak
