"""Base class of nnunet_ext's trainers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import distributed as dist
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnunet_ext.checkpoints import load_training_checkpoint
from nnunet_ext.registration import MEMORY_ADVICE, load_target
from nnunet_ext.trainers.schedule import SCHEDULE_VARIABLES, schedule_overrides


def unwrap_module(module: nn.Module) -> nn.Module:
    """``module`` without its DistributedDataParallel and torch.compile wrappers."""
    module = module.module if isinstance(module, DistributedDataParallel) else module
    return module._orig_mod if isinstance(module, OptimizedModule) else module


class nnUNetTrainerExtBase(nnUNetTrainer):
    """nnU-Net's trainer with the additions every nnunet_ext trainer shares.

    - Deep-supervision scales come from the network (``network.deep_supervision_scales``, the network contract
      of :mod:`nnunet_ext.networks.common`), so targets match outputs for architectures whose decoder levels
      differ from nnU-Net's plans; networks without that attribute (nnU-Net's own U-Nets) get nnU-Net's scales.
    - The schedule may be shortened through the environment (:mod:`nnunet_ext.trainers.schedule`); the variables
      set are logged and kept as ``schedule_overrides`` (in ``debug.json``).
    - Checkpoints hold nnU-Net's keys plus what :meth:`checkpoint_contents` adds, and :meth:`load_checkpoint` reads a
      file once (or takes a loaded dict) and restores them through :meth:`restore_checkpoint`.
    - Under DDP (``-num_gpus N``) each rank draws its training samples from its own shard of the fold's training
      cases (:meth:`rank_shard`), so the ranks' samples of a step are distinct cases; nnU-Net lets every rank draw
      from all of them.

    The ``__init__`` signature is nnU-Net's, unchanged: checkpoints store it as ``init_args``.
    """

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.schedule_overrides = overrides = schedule_overrides()
        for attribute, value in overrides.items():
            setattr(self, attribute, value)
        if self.schedule_overrides:
            variables = [f"{v}={self.schedule_overrides[a]}" for v, a in SCHEDULE_VARIABLES.items() if a in overrides]
            self.print_to_log_file(f"Schedule shortened from the environment: {', '.join(variables)}")

    @property
    def unwrapped_network(self) -> nn.Module:
        """``self.network`` without its DDP and torch.compile wrappers."""
        return unwrap_module(self.network)

    def on_train_start(self):
        super().on_train_start()
        if self.device.type == "cuda" and self.local_rank == 0:
            self.warn_if_plans_exceed_gpu_memory(torch.cuda.get_device_properties(self.device).total_memory)

    def warn_if_plans_exceed_gpu_memory(self, total_memory_bytes: int) -> None:
        """Log one line naming the ``nnUNetv2_ext_plan`` command when the estimated training peak of the plans in use
        exceeds ``total_memory_bytes`` (:data:`~nnunet_ext.registration.MEMORY_ADVICE`; costs one estimate, seconds
        to a minute of CPU, at the start of GPU training)."""
        world_size = dist.get_world_size() if self.is_ddp else 1
        advice = load_target(MEMORY_ADVICE)(self, total_memory_bytes, world_size)
        if advice is not None:
            self.print_to_log_file(advice)

    def _get_deep_supervision_scales(self) -> list[list[float]] | None:
        network = self.unwrapped_network
        if not self.enable_deep_supervision or not hasattr(network, "deep_supervision_scales"):
            return super()._get_deep_supervision_scales()
        return network.deep_supervision_scales

    def rank_shard(self, keys: Sequence[str], what: str) -> list[str]:
        """This rank's cases of ``keys`` (``what`` they are, for the log): ``keys[rank::world_size]`` under DDP, so
        the ranks draw from disjoint shards; every key without DDP, or, with a warning in the log, when there are
        fewer keys than ranks (ranks may then draw the same case in a step). With a case count that the ranks do
        not divide, the cases of the smaller shards are drawn slightly more often."""
        keys = list(keys)
        if not self.is_ddp:
            return keys
        world_size = dist.get_world_size()
        if len(keys) < world_size:
            self.print_to_log_file(
                f"WARNING: {len(keys)} {what} for {world_size} ranks: every rank draws from all of them, so ranks may "
                "draw the same case in a step"
            )
            return keys
        return keys[self.local_rank :: world_size]

    def get_tr_and_val_datasets(self):
        """nnU-Net's training and validation datasets; under DDP the training one holds this rank's
        :meth:`rank_shard` of the fold's training cases (validation is nnU-Net's: every case on every rank)."""
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        if not self.is_ddp:
            return dataset_tr, dataset_val
        shard = self.rank_shard(dataset_tr.identifiers, "training cases")
        dataset_tr = self.dataset_class(
            self.preprocessed_dataset_folder,
            shard,
            folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage,
        )
        return dataset_tr, dataset_val

    def checkpoint_contents(self) -> dict:
        """What :meth:`save_checkpoint` writes: the keys of nnunetv2 2.8.1's ``nnUNetTrainer.save_checkpoint`` (which
        has no hook to add one; ``nnUNetv2_predict`` and ``--c`` read them). Subclasses add their own keys."""
        return {
            "network_weights": self.unwrapped_network.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
        }

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        torch.save(self.checkpoint_contents(), filename)

    def load_checkpoint(self, filename_or_checkpoint: str | dict) -> None:
        """Restore training from a checkpoint file (read once) or an already loaded checkpoint dict (nnunetv2
        2.8.1's own ``load_checkpoint`` accepts only a file name, though its signature says otherwise)."""
        if not self.was_initialized:
            self.initialize()
        source = filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else "the checkpoint given"
        try:
            self.restore_checkpoint(load_training_checkpoint(filename_or_checkpoint))
        except (KeyError, RuntimeError, ValueError) as error:
            raise RuntimeError(f"{source}: cannot restore {type(self).__name__} from it: {error}") from error

    def restore_checkpoint(self, checkpoint: dict) -> None:
        """nnU-Net's restore: network weights (a ``module.`` prefix of a DataParallel save removed), initialisation
        arguments, epoch, logging, best EMA, mirroring axes, optimizer and grad scaler. Subclasses restore their
        own keys after calling this."""
        own = self.unwrapped_network.state_dict()
        weights = {
            name[len("module.") :] if name not in own and name.startswith("module.") else name: value
            for name, value in checkpoint["network_weights"].items()
        }
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get(
            "inference_allowed_mirroring_axes", self.inference_allowed_mirroring_axes
        )
        self.unwrapped_network.load_state_dict(weights)
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.grad_scaler is not None and checkpoint["grad_scaler_state"] is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
