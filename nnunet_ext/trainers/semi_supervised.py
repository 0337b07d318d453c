"""Base class of the semi-supervised trainers: a labeled and an unlabeled stream, a scheme loss, extra state.

The contract for a scheme (MGCC, GuidedNet, ...): subclass :class:`nnUNetTrainerSemiSupervisedBase` and implement
:meth:`~nnUNetTrainerSemiSupervisedBase.compute_scheme_loss`, which gets one :class:`SemiSupervisedBatch` per step
(labeled samples first, then unlabeled ones) and returns the loss and its terms to log. Extra networks and state are
registered in an ``initialize`` override (:meth:`~nnUNetTrainerSemiSupervisedBase.register_network`,
:meth:`~nnUNetTrainerSemiSupervisedBase.register_state`); the base steps, checkpoints, restores (``--c``), logs and
distributes (``-num_gpus``) them. Validation, export, checkpoint selection and the 5-fold machinery are nnU-Net's,
unchanged; inference uses ``self.network`` only. The base itself is not registered as a trainer.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgeneratorsv2.helpers.scalar_type import RandomScalar
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from nnunetv2.paths import nnUNet_raw
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.ddp_allgather import AllGatherGrad
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel

from nnunet_ext.ssl.preprocessing import plans_fingerprint
from nnunet_ext.ssl.unlabeled_data import (
    POOL_VARIABLE,
    SOURCES,
    UnlabeledDataset,
    UnlabeledPool,
    discover_unlabeled_pool,
    nnUNetUnlabeledDataLoader,
    pool_sources,
)
from nnunet_ext.trainers.base import nnUNetTrainerExtBase, unwrap_module
from nnunet_ext.trainers.labeled_subset import LabeledSubsetSplit
from nnunet_ext.trainers.progress import plot_loss_terms
from nnunet_ext.trainers.schedule import RAMPUP_VARIABLE, rampup_mode
from nnunet_ext.trainers.steps import GRADIENT_CLIP_NORM

#: checkpoint key of everything the semi-supervised base adds to nnU-Net's checkpoint
CHECKPOINT_KEY = "semi_supervised_state"
#: logger key prefix of the scheme's loss terms (``train_loss_{term}``)
TERM_KEY_PREFIX = "train_loss_"


@dataclass
class SemiSupervisedBatch:
    """One training step's samples, on the training device.

    ``labeled_data`` (L, C, *patch) with ``target`` (nnU-Net's: (L, 1, *patch) int, or one such tensor per
    deep-supervision scale); ``unlabeled_data`` (U, C, *patch), no target. Keys are ``case`` (labeled) and
    ``{source}/{case}`` (unlabeled).
    """

    labeled_data: torch.Tensor
    target: torch.Tensor | list[torch.Tensor]
    unlabeled_data: torch.Tensor
    labeled_keys: list[str]
    unlabeled_keys: list[str]

    @property
    def num_labeled(self) -> int:
        return self.labeled_data.shape[0]

    @cached_property
    def data(self) -> torch.Tensor:
        """The whole batch (L + U, C, *patch): labeled samples first."""
        return torch.cat([self.labeled_data, self.unlabeled_data])

    def split(self, output):
        """``(labeled part, unlabeled part)`` of a whole-batch output: a tensor, or a list/tuple of them."""
        if isinstance(output, (list, tuple)):
            parts = [self.split(item) for item in output]
            return [labeled for labeled, _ in parts], [unlabeled for _, unlabeled in parts]
        return output[: self.num_labeled], output[self.num_labeled :]


def split_batch(batch_size: int, labeled_fraction: float) -> tuple[int, int]:
    """``(labeled, unlabeled)``: ``round(batch_size * labeled_fraction)`` (half up) labeled, the rest unlabeled,
    at least one of each."""
    labeled = max(1, math.floor(batch_size * labeled_fraction + 0.5))
    return labeled, max(1, batch_size - labeled)


class nnUNetTrainerSemiSupervisedBase(LabeledSubsetSplit, nnUNetTrainerExtBase, metaclass=ABCMeta):
    """nnU-Net trainer with a labeled and an unlabeled stream; subclasses implement :meth:`compute_scheme_loss`.

    Labeled stream: nnU-Net's loader and augmentation over the fold's labeled training cases (those of
    ``splits_ssl.json`` from ``nnUNetv2_ext_ssl_split``, or without it every training case of the fold). Unlabeled
    stream: :meth:`get_unlabeled_dataloader` over the pool of :attr:`unlabeled_sources` found at training start.
    Batch: :meth:`batch_composition` of nnU-Net's (per-rank) batch size; validation batches have the labeled size.

    Under DDP (``nnUNetv2_train -num_gpus N``): ``self.network`` and every registered network are DDP-wrapped with
    SyncBatchNorm; each rank composes its share of the batch nnU-Net split, drawing from its own shards of the
    labeled cases and of the pool (:meth:`rank_shard`); ``global_iteration`` advances alike on every rank; scheme
    state and loss terms on batch statistics go through :meth:`sum_over_ranks`, so the state stays identical on every
    rank and a step is that of the global batch; rank 0 writes the checkpoints and ``--c`` restores every rank.

    Example (cross pseudo supervision between two networks, with a class-weight state)::

        class nnUNetTrainerTwoNetworkExample(nnUNetTrainerSemiSupervisedBase):
            def initialize(self):
                super().initialize()
                network = self.build_network_architecture(
                    self.plans_manager, self.configuration_manager, self.num_input_channels,
                    self.label_manager.num_segmentation_heads, self.enable_deep_supervision)
                self.register_network("network2", network, nnunet_sgd(network, self.initial_lr))
                self.class_weights = torch.ones(self.label_manager.num_segmentation_heads, device=self.device)
                self.register_state("class_weights")

            def compute_scheme_loss(self, batch):
                output1, output2 = self.network(batch.data), self.network2(batch.data)
                supervised = self.loss(batch.split(output1)[0], batch.target) + self.loss(
                    batch.split(output2)[0], batch.target)
                logits1, logits2 = output1[0], output2[0]  # full resolution (deep supervision on)
                cps = F.cross_entropy(logits1, logits2.argmax(1).detach(), self.class_weights) + F.cross_entropy(
                    logits2, logits1.argmax(1).detach(), self.class_weights)
                weight = ramped_weight(0.1, self.ramp_iteration, rampup_length=200)
                return supervised + weight * cps, {"supervised": supervised, "cps": cps, "cps_weight": weight}
    """

    #: without splits_ssl.json every training case of the fold is labeled (the pool then comes from imagesUl/...)
    requires_ssl_split = False
    #: share of nnU-Net's batch drawn from the labeled stream (the published schemes: half)
    labeled_batch_fraction: float = 0.5
    #: unlabeled sources drawn from when present: "split", "real", "synthetic" (``nnUNet_ext_pool`` overrides them)
    unlabeled_sources: tuple[str, ...] = SOURCES
    #: the supervised trainer whose architecture the scheme trains (None: the scheme's own network); the benchmark
    #: compares the scheme's train step with this trainer's at the same total batch
    supervised_trainer: type | None = None
    #: the scheme's ``build_network_architecture`` on a supervised trainer's architecture (a staticmethod of a
    #: function ``supervised_trainer -> staticmethod``); schemes that can run on other architectures set it
    scheme_architecture: staticmethod | None = None
    #: iteration of the published schedule from which the scheme's ramped loss weights are at their full value
    rampup_iterations: int = 0
    #: length in iterations of the published run the ramp-up constants belong to (``nnUNet_ext_rampup=relative``
    #: maps this run onto it); None: the scheme has no ramp-up
    published_iterations: int | None = None

    def __init_subclass__(cls, **kwargs):
        """A subclass that sets ``supervised_trainer`` trains the scheme on that trainer's architecture, e.g.
        ``class nnUNetTrainerMGCC_CMUNeXt(nnUNetTrainerMGCC): supervised_trainer = nnUNetTrainerCMUNeXt``."""
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("supervised_trainer") is not None:
            if cls.scheme_architecture is None:
                raise TypeError(
                    f"{cls.__name__} sets supervised_trainer, but its scheme defines no scheme_architecture to build "
                    "the scheme on that architecture"
                )
            cls.build_network_architecture = cls.scheme_architecture(cls.supervised_trainer)

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.global_iteration = 0
        self.rampup_mode = rampup_mode()
        sources = pool_sources(self.unlabeled_sources)
        if sources != tuple(self.unlabeled_sources):
            self.unlabeled_sources = sources
            self.print_to_log_file(f"Unlabeled sources from {POOL_VARIABLE}: {', '.join(sources)}")
        if self.rampup_is_relative:
            self.print_to_log_file(
                f"Ramp-ups relative to the run ({RAMPUP_VARIABLE}=relative): full weight after {self.rampup_end} of "
                f"this run's {self.run_iterations} iterations (published: {self.rampup_iterations} of "
                f"{self.published_iterations})"
            )
        self.labeled_batch_size: int | None = None
        self.unlabeled_batch_size: int | None = None
        self.unlabeled_pool: UnlabeledPool | None = None
        self.dataloader_unlabeled = None
        self._extra_networks: dict[str, nn.Module] = {}
        self._extra_optimizers: dict[str, torch.optim.Optimizer] = {}
        self._extra_lr_schedulers: dict[str, object] = {}
        self._extra_state_names: list[str] = []

    @property
    def run_iterations(self) -> int:
        """Training iterations of this run: ``num_epochs * num_iterations_per_epoch``."""
        return self.num_epochs * self.num_iterations_per_epoch

    @property
    def rampup_is_relative(self) -> bool:
        return self.rampup_mode == "relative" and bool(self.published_iterations)

    @property
    def ramp_iteration(self) -> int:
        """The iteration that ramp-ups read: ``global_iteration`` (published schedule), or with
        ``nnUNet_ext_rampup=relative`` the iteration at the same fraction of the published run,
        ``global_iteration * published_iterations // run_iterations``."""
        if not self.rampup_is_relative:
            return self.global_iteration
        return self.global_iteration * self.published_iterations // self.run_iterations

    @property
    def rampup_end(self) -> int:
        """The first ``global_iteration`` at which every ramped weight is at its full value."""
        if not self.rampup_is_relative:
            return self.rampup_iterations
        return math.ceil(self.rampup_iterations * self.run_iterations / self.published_iterations)

    # ----------------------------------------------------------------------------------------------- scheme API
    @abstractmethod
    def compute_scheme_loss(self, batch: SemiSupervisedBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """The scheme's training loss for one step and its terms to log (scalars).

        Called by :meth:`train_step` (under autocast on CUDA) after every registered optimizer was zeroed; the base
        back-propagates the loss (with the grad scaler), clips each optimizer's gradients to norm 12 and steps them.
        Forward each network once on ``batch.data`` and cut the output with ``batch.split``: one forward is what the
        published schemes do and what DistributedDataParallel requires. ``self.loss`` is nnU-Net's Dice + CE (deep
        supervision) for the labeled part; ``self.global_iteration`` is the 0-based iteration over the whole run
        (restored on ``--c``) and ``self.ramp_iteration`` the iteration ramp-ups read. Return the same terms every step
        (ramp weights as plain floats): each is averaged over the epoch (and the ranks), logged as ``train_loss_{term}``
        and plotted to ``progress_ssl.png``."""

    def initialise_scheme_state(self, class_histogram: torch.Tensor) -> None:
        """Set the scheme's state for a fresh run from the labeled cases' voxel counts per class (K,), e.g. class
        weights; nothing by default. A scheme that needs it calls it at training start (not on ``--c``)."""

    def batch_composition(self, batch_size: int) -> tuple[int, int]:
        """``(labeled, unlabeled)`` samples per step for nnU-Net's (per-rank) ``batch_size``: under DDP nnU-Net
        splits the plans' batch over the ranks and each rank composes its share, drawing from its own random loaders
        over its own shards of the labeled and the unlabeled cases (:meth:`rank_shard`).

        Override to fix the counts (e.g. ``return 4, 4``)."""
        return split_batch(batch_size, self.labeled_batch_fraction)

    def register_network(
        self, name: str, network: nn.Module, optimizer: torch.optim.Optimizer | None = None, lr_scheduler=None
    ) -> nn.Module:
        """Add an extra network as ``self.<name>`` (device, compile, DDP with SyncBatchNorm as ``self.network``);
        returns it. Its train/eval mode follows the main network; deep supervision is toggled on ``self.network``
        only; its weights and optimizer/scheduler state are saved under :data:`CHECKPOINT_KEY`.

        Args:
            optimizer: stepped with the main optimizer in every training step (its parameters clipped to norm 12).
            lr_scheduler: stepped with ``step(current_epoch)`` at every epoch start, like nnU-Net's PolyLRScheduler.
        """
        self._check_new_name(name)
        network = network.to(self.device)
        if self._do_i_compile():
            network = torch.compile(network)
        if self.is_ddp:
            network = DistributedDataParallel(
                nn.SyncBatchNorm.convert_sync_batchnorm(network), device_ids=[self.local_rank]
            )
        setattr(self, name, network)
        self._extra_networks[name] = network
        if optimizer is not None:
            self._extra_optimizers[name] = optimizer
        if lr_scheduler is not None:
            self._extra_lr_schedulers[name] = lr_scheduler
        return network

    @property
    def extra_networks(self) -> dict[str, nn.Module]:
        """The networks added with :meth:`register_network`, by name (as registered: compiled/DDP-wrapped)."""
        return dict(self._extra_networks)

    def register_state(self, *names: str) -> None:
        """Save and restore the attributes ``names`` of ``self`` with the checkpoint (under :data:`CHECKPOINT_KEY`):
        objects with ``state_dict``/``load_state_dict``, tensors (restored in place onto the device) and plain
        picklable values. Under DDP keep them identical on every rank, e.g. update them from :meth:`sum_over_ranks`."""
        for name in names:
            if not hasattr(self, name):
                raise AttributeError(f"set self.{name} before registering it as state")
            self._check_new_name(name)
            self._extra_state_names.append(name)

    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the DDP ranks (a new tensor of its shape); ``tensor`` itself without DDP.

        Differentiable as nnU-Net's gathered batch-Dice sums are: a loss computed from such sums has the global
        batch's value on every rank, and each rank's gradient flows back into its own samples. Use it for scheme
        state updated from the batch (identical on every rank) and for loss terms on batch statistics
        (:mod:`nnunet_ext.ssl.ranks`)."""
        return AllGatherGrad.apply(tensor).sum(0) if self.is_ddp else tensor

    @staticmethod
    def get_unlabeled_transforms(
        patch_size: tuple[int, ...] | list[int],
        rotation_for_DA: RandomScalar,
        mirror_axes: tuple[int, ...],
        do_dummy_2d_data_aug: bool,
    ) -> BasicTransform:
        """Augmentation of unlabeled samples: nnU-Net's training transforms without the steps that need a
        segmentation (masking, cascade, regions, deep-supervision targets)."""
        return nnUNetTrainer.get_training_transforms(
            patch_size, rotation_for_DA, None, mirror_axes, do_dummy_2d_data_aug
        )

    # ------------------------------------------------------------------------------------------- data streams
    def _set_batch_size_and_oversample(self) -> None:
        super()._set_batch_size_and_oversample()
        self.labeled_batch_size, self.unlabeled_batch_size = self.batch_composition(self.batch_size)
        self.batch_size = self.labeled_batch_size  # nnU-Net's labeled and validation loaders use the labeled share

    def on_train_start(self):
        """nnU-Net's start plus the unlabeled stream: the pool of :attr:`unlabeled_sources`
        (:func:`~nnunet_ext.ssl.unlabeled_data.discover_unlabeled_pool`: ``split``, the fold's label-less training
        cases read image-only from nnU-Net's folder; ``real`` and ``synthetic``, ``imagesUl/`` and ``imagesSynth/``
        preprocessed by ``nnUNetv2_ext_preprocess_unlabeled``). Labels and ``.pkl`` files of pool cases are never
        opened. An empty pool, a pool of other plans or channel count, or a ``splits_ssl.json`` of another
        ``splits_final.json`` stops training with a message saying what to run."""
        if not self.was_initialized:
            self.initialize()
        if self.is_cascaded:
            raise RuntimeError(
                "semi-supervised training of a cascade stage is not supported: unlabeled cases have no "
                "previous-stage segmentation"
            )
        self.do_split()
        raw_dataset = Path(nnUNet_raw) / self.plans_manager.dataset_name if nnUNet_raw.is_set() else None
        self.unlabeled_pool = discover_unlabeled_pool(
            self.preprocessed_dataset_folder_base,
            self.preprocessed_dataset_folder,
            self.configuration_manager.data_identifier,
            self.ssl_fold,
            plans_fingerprint(self.plans_manager, self.configuration_manager, self.dataset_json),
            self.num_input_channels,
            self.unlabeled_sources,
            raw_dataset,
        )
        super().on_train_start()
        self.dataloader_unlabeled = self.get_unlabeled_dataloader()
        self.print_to_log_file(
            f"{self.unlabeled_pool.describe()}; per step {self.labeled_batch_size} labeled + "
            f"{self.unlabeled_batch_size} unlabeled samples",
            *self.unlabeled_pool.notes,
        )

    def unlabeled_dataset(self) -> UnlabeledDataset:
        """The unlabeled cases this rank draws from: the whole pool, or under DDP its :meth:`rank_shard`."""
        keys = self.rank_shard(sorted(self.unlabeled_pool.image_files), "unlabeled cases")
        return UnlabeledDataset({key: self.unlabeled_pool.image_files[key] for key in keys})

    def get_unlabeled_dataloader(self):
        """nnU-Net's augmenter over :meth:`unlabeled_dataset` (same worker count and caching as the labeled
        stream)."""
        rotation, dummy_2d, initial_patch_size, mirror_axes = (
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        )
        patch_size = self.configuration_manager.patch_size
        loader = nnUNetUnlabeledDataLoader(
            self.unlabeled_dataset(),
            self.unlabeled_batch_size,
            initial_patch_size,
            patch_size,
            self.label_manager,
            transforms=self.get_unlabeled_transforms(patch_size, rotation, mirror_axes, dummy_2d),
        )
        num_processes = get_allowed_n_proc_DA()
        if num_processes == 0:
            augmenter = SingleThreadedAugmenter(loader, None)
        else:
            augmenter = NonDetMultiThreadedAugmenter(
                loader,
                None,
                num_processes,
                num_cached=max(6, num_processes // 2),
                seeds=None,
                pin_memory=self.device.type == "cuda",
                wait_time=0.002,
            )
        next(augmenter)
        return augmenter

    def on_train_end(self):
        super().on_train_end()
        if isinstance(self.dataloader_unlabeled, NonDetMultiThreadedAugmenter):
            with contextlib.redirect_stdout(io.StringIO()):  # as nnU-Net does: _finish() prints per worker
                self.dataloader_unlabeled._finish()

    # ------------------------------------------------------------------------------------------ training step
    def train_step(self, batch: dict) -> dict:
        unlabeled = next(self.dataloader_unlabeled)
        target = batch["target"]
        ssl_batch = SemiSupervisedBatch(
            labeled_data=batch["data"].to(self.device, non_blocking=True),
            target=[t.to(self.device, non_blocking=True) for t in target]
            if isinstance(target, list)
            else target.to(self.device, non_blocking=True),
            unlabeled_data=unlabeled["data"].to(self.device, non_blocking=True),
            labeled_keys=[str(key) for key in batch["keys"]],
            unlabeled_keys=[str(key) for key in unlabeled["keys"]],
        )
        optimizers = [self.optimizer, *self._extra_optimizers.values()]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            loss, terms = self.compute_scheme_loss(ssl_batch)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
        else:
            loss.backward()
        for optimizer in optimizers:
            if self.grad_scaler is not None:
                self.grad_scaler.unscale_(optimizer)
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(parameters, GRADIENT_CLIP_NORM)
            if self.grad_scaler is not None:
                self.grad_scaler.step(optimizer)
            else:
                optimizer.step()
        if self.grad_scaler is not None:
            self.grad_scaler.update()
        self.global_iteration += 1
        return {"loss": loss.detach().cpu().numpy(), "loss_terms": {k: _scalar(v) for k, v in terms.items()}}

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        for network in self._extra_networks.values():
            network.train()
        for lr_scheduler in self._extra_lr_schedulers.values():
            lr_scheduler.step(self.current_epoch)

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        for network in self._extra_networks.values():
            network.eval()

    # ----------------------------------------------------------------------------------------------- logging
    def on_train_epoch_end(self, train_outputs: list[dict]):
        terms = [output.pop("loss_terms") for output in train_outputs]
        super().on_train_epoch_end(train_outputs)
        logged = self.logger.local_logger.my_fantastic_logging
        names = set().union(*terms) | {k[len(TERM_KEY_PREFIX) :] for k in logged if k.startswith(TERM_KEY_PREFIX)}
        for name in sorted(names):
            values = [step.get(name, math.nan) for step in terms]
            if self.is_ddp:
                gathered = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, values)
                values = [value for rank_values in gathered for value in rank_values]
            finite = [value for value in values if not math.isnan(value)]
            mean = float(np.mean(finite)) if finite else math.nan
            key = TERM_KEY_PREFIX + name
            logged.setdefault(key, [math.nan] * self.current_epoch)  # a new term: NaN for the epochs before it
            self.logger.log(key, mean, self.current_epoch)
            self.print_to_log_file(key, np.round(mean, decimals=4))

    def on_epoch_end(self):
        super().on_epoch_end()
        if self.local_rank == 0:
            logged = self.logger.local_logger.my_fantastic_logging
            terms = {k[len(TERM_KEY_PREFIX) :]: v for k, v in logged.items() if k.startswith(TERM_KEY_PREFIX)}
            if terms:
                plot_loss_terms(terms, Path(self.output_folder) / "progress_ssl.png")

    # -------------------------------------------------------------------------------------------- checkpoints
    def checkpoint_contents(self) -> dict:
        return {**super().checkpoint_contents(), CHECKPOINT_KEY: self._semi_supervised_state()}

    def restore_checkpoint(self, checkpoint: dict) -> None:
        super().restore_checkpoint(checkpoint)
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            raise RuntimeError(
                f"the checkpoint holds no {CHECKPOINT_KEY}: it was not written by a semi-supervised trainer, so its "
                "extra networks and state cannot be restored"
            )
        self.global_iteration = state["global_iteration"]
        restored = {
            "networks": {name: unwrap_module(network) for name, network in self._extra_networks.items()},
            "optimizers": self._extra_optimizers,
            "lr_schedulers": self._extra_lr_schedulers,
        }
        for group, objects in restored.items():
            for name, obj in objects.items():
                obj.load_state_dict(self._saved(state, group, name))
        for name in self._extra_state_names:
            self._restore_attribute(name, self._saved(state, "attributes", name))

    def _semi_supervised_state(self) -> dict:
        return {
            "global_iteration": self.global_iteration,
            "networks": {name: unwrap_module(net).state_dict() for name, net in self._extra_networks.items()},
            "optimizers": {name: opt.state_dict() for name, opt in self._extra_optimizers.items()},
            "lr_schedulers": {name: sched.state_dict() for name, sched in self._extra_lr_schedulers.items()},
            "attributes": {name: _saved_value(getattr(self, name)) for name in self._extra_state_names},
        }

    def _restore_attribute(self, name: str, value) -> None:
        current = getattr(self, name)
        if hasattr(current, "load_state_dict"):
            current.load_state_dict(value)
        elif isinstance(current, torch.Tensor) and isinstance(value, torch.Tensor) and current.shape == value.shape:
            with torch.no_grad():
                current.copy_(value)
        elif isinstance(value, torch.Tensor):
            setattr(self, name, value.to(self.device))
        else:
            setattr(self, name, value)

    @staticmethod
    def _saved(state: dict, group: str, name: str):
        if name not in state[group]:
            raise RuntimeError(f"the checkpoint has no saved {group} entry {name!r} (registered after it was written)")
        return state[group][name]

    def _check_new_name(self, name: str) -> None:
        if name in self._extra_networks or name in self._extra_state_names:
            raise ValueError(f"{name!r} is already registered")


def _scalar(value: torch.Tensor | float) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _saved_value(value):
    """What the checkpoint stores for a registered attribute: its state dict, a CPU copy of a tensor, or a copy."""
    if hasattr(value, "state_dict"):
        return value.state_dict()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    return copy.deepcopy(value)
