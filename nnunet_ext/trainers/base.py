"""Base class of nnunet_ext's trainers."""

from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnunet_ext.trainers.schedule import schedule_overrides


def unwrap_module(module: nn.Module) -> nn.Module:
    """``module`` without its DistributedDataParallel and torch.compile wrappers."""
    module = module.module if isinstance(module, DistributedDataParallel) else module
    return module._orig_mod if isinstance(module, OptimizedModule) else module


class nnUNetTrainerExtBase(nnUNetTrainer):
    """nnU-Net's trainer with two additions every nnunet_ext trainer shares.

    - Deep-supervision scales come from the network (``network.deep_supervision_scales``, the network contract
      of :mod:`nnunet_ext.networks.common`), so targets match outputs for architectures whose decoder levels
      differ from nnU-Net's plans; networks without that attribute (nnU-Net's own U-Nets) get nnU-Net's scales.
    - The schedule may be shortened through the environment (:mod:`nnunet_ext.trainers.schedule`).

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
        overrides = schedule_overrides()
        for attribute, value in overrides.items():
            setattr(self, attribute, value)
        if overrides:
            self.print_to_log_file(f"Schedule shortened from the environment: {overrides}")

    @property
    def unwrapped_network(self) -> nn.Module:
        """``self.network`` without its DDP and torch.compile wrappers."""
        return unwrap_module(self.network)

    def _get_deep_supervision_scales(self) -> list[list[float]] | None:
        network = self.unwrapped_network
        if not self.enable_deep_supervision or not hasattr(network, "deep_supervision_scales"):
            return super()._get_deep_supervision_scales()
        return network.deep_supervision_scales
