"""GCtx-UNet trainers: ``nnUNetTrainerGCTxUNet`` (mlp_ratio 4, the published OCT run) and ``_MLP3`` (official config).

Optional initialisation from a local GC-ViT ImageNet checkpoint: set ``nnUNet_ext_gcvit_checkpoint`` to the file
(e.g. ``gcvit_1k_xxtiny.pth.tar``); tensors are matched by name and shape and the encoder weights are mirrored into
the decoder, as the official ``load_from`` does (:func:`nnunet_ext.networks.gctx_unet.load_gcvit_encoder_weights`).
The file is read as tensors only (:func:`nnunet_ext.checkpoints.load_weights`).
"""

from __future__ import annotations

from functools import partial

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_ext.networks.gctx_unet import GCtxUNet, load_gcvit_encoder_weights
from nnunet_ext.trainers.base import nnUNetTrainerExtBase
from nnunet_ext.trainers.plans import require_2d
from nnunet_ext.trainers.pretrained import initialise_from_environment

#: environment variable naming a local GC-ViT ImageNet checkpoint to initialise GCtx-UNet from
PRETRAINED_VARIABLE = "nnUNet_ext_gcvit_checkpoint"


def require_gctx_2d(configuration_manager: ConfigurationManager, configuration: str = "") -> None:
    """GCtx-UNet (GC-ViT windows, bicubic upsampling) is 2D only; the message points to the 3D-capable GCT-UNet."""
    hint = " Train it with a 2d configuration, or use nnUNetTrainerGCTUNet, which supports 3D."
    require_2d(configuration_manager, "GCtx-UNet", configuration, hint)


def build_gctx_unet(
    mlp_ratio: float,
    plans_manager: PlansManager,
    configuration_manager: ConfigurationManager,
    num_input_channels: int,
    num_output_channels: int,
    enable_deep_supervision: bool = True,
) -> GCtxUNet:
    """GCtx-UNet built for the plans' 2D patch (windows and global-query pooling derived from it)."""
    require_gctx_2d(configuration_manager)
    return GCtxUNet(
        num_input_channels,
        num_output_channels,
        patch_size=configuration_manager.patch_size,
        mlp_ratio=mlp_ratio,
        deep_supervision=enable_deep_supervision,
    )


class nnUNetTrainerGCTxUNet(nnUNetTrainerExtBase):
    """GCtx-UNet (GC-ViT blocks, mlp_ratio 4: 14,081,304 parameters at 224^2, 3 channels, 3 classes).

    Training recipe: the published optimiser, AdamW (lr 1e-4, weight decay 1e-4), with nnU-Net's poly schedule,
    epochs, sampling, augmentation and Dice + CE loss (deep supervision at 1, 1/4, 1/8, 1/16). nnU-Net's SGD
    (momentum 0.99, lr 1e-2) was not used because the network is a LayerNorm transformer published with AdamW;
    the choice is not backed by a comparative measurement.
    """

    build_network_architecture = staticmethod(partial(build_gctx_unet, 4.0))

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        require_gctx_2d(self.configuration_manager, configuration)
        self.initial_lr = 1e-4
        self.weight_decay = 1e-4

    def initialize(self) -> None:
        super().initialize()
        initialise_from_environment(
            PRETRAINED_VARIABLE, self.unwrapped_network, load_gcvit_encoder_weights, self.print_to_log_file
        )

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)


class nnUNetTrainerGCTxUNet_MLP3(nnUNetTrainerGCTxUNet):
    """GCtx-UNet with the official config's mlp_ratio 3 (12,341,784 parameters at 224^2, 3 channels, 3 classes)."""

    build_network_architecture = staticmethod(partial(build_gctx_unet, 3.0))
