"""GCGLE-Net trainer: ``nnUNetTrainerGCGLE`` (2D only)."""

from __future__ import annotations

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_ext.networks.gcgle import GCGLEConfig, GCGLENet, load_pretrained_encoder
from nnunet_ext.trainers.base import nnUNetTrainerExtBase
from nnunet_ext.trainers.plans import require_2d
from nnunet_ext.trainers.pretrained import initialise_from_environment

#: environment variable naming a local BiFormer ImageNet checkpoint to initialise the encoder from
PRETRAINED_VARIABLE = "nnUNet_ext_GCGLE_pretrained"


def require_gcgle_patch(configuration_manager: ConfigurationManager, configuration: str = "") -> None:
    """Raise a ValueError naming the supported configurations unless the configuration is 2D with patch sides
    divisible by 4 (GCGLE-Net is a 2D network with a /4 convolutional stem)."""
    require_2d(configuration_manager, "nnUNetTrainerGCGLE (GCGLE-Net)", configuration)
    patch = list(configuration_manager.patch_size)
    if any(side % 4 for side in patch):
        raise ValueError(
            f"nnUNetTrainerGCGLE needs patch sides divisible by 4; configuration {configuration!r} has patch {patch}"
        )


def build_gcgle(
    plans_manager: PlansManager,
    configuration_manager: ConfigurationManager,
    num_input_channels: int,
    num_output_channels: int,
    enable_deep_supervision: bool = True,
) -> GCGLENet:
    """The published GCGLE-Net (R4 decoder) for a 2D configuration of the plans.

    Routing regions follow the patch (7 x 7 at 224, 8 x 8 at 256, rectangular grids for rectangular patches);
    input channels go to the stem as they are.
    """
    require_gcgle_patch(configuration_manager)
    return GCGLENet(num_input_channels, num_output_channels, GCGLEConfig(), deep_supervision=enable_deep_supervision)


class nnUNetTrainerGCGLE(nnUNetTrainerExtBase):
    """GCGLE-Net (BiFormer blocks with LEB, CSAM skip fusion, 4-level decoder; 47.39 M parameters at 3 channels
    / 9 classes), 2D configurations only: other configurations fail at construction with a clear message.

    Deep supervision: 1x1 heads at the decoder levels (1/16, 1/8, 1/4) besides the final x4 head.

    Training recipe: nnU-Net's schedule, loss and augmentation; optimiser of the published Synapse/ACDC recipe,
    SGD with momentum 0.9 (not nnU-Net's 0.99 Nesterov) and weight decay 1e-4, initial lr 1e-2 (the published ACDC
    value, also nnU-Net's), poly decay with exponent 0.9 (both). Chosen from the published recipe, not measured
    against nnU-Net's optimiser.

    Optional ImageNet initialisation: set ``nnUNet_ext_GCGLE_pretrained`` to a local BiFormer checkpoint; tensors
    whose name and shape match the encoder are loaded (non-strict, as the published training), the rest keeps
    its initialisation; the counts are logged (:func:`~nnunet_ext.trainers.pretrained.initialise_from_environment`).
    """

    build_network_architecture = staticmethod(build_gcgle)

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        require_gcgle_patch(self.configuration_manager, configuration)
        self.weight_decay = 1e-4

    def initialize(self) -> None:
        super().initialize()
        initialise_from_environment(
            PRETRAINED_VARIABLE, self.unwrapped_network, load_pretrained_encoder, self.print_to_log_file
        )

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, PolyLRScheduler]:
        optimizer = torch.optim.SGD(
            self.network.parameters(), self.initial_lr, momentum=0.9, weight_decay=self.weight_decay
        )
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)
