"""CMUNeXt trainers: ``nnUNetTrainerCMUNeXt``, ``nnUNetTrainerCMUNeXt_S``, ``nnUNetTrainerCMUNeXt_L``."""

from __future__ import annotations

from functools import partial

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_ext.networks.cmunext import CMUNEXT_VARIANTS, CMUNeXt
from nnunet_ext.trainers.base import nnUNetTrainerExtBase
from nnunet_ext.trainers.plans import conv_op_of, stage_strides


def build_cmunext(
    variant: str,
    plans_manager: PlansManager,
    configuration_manager: ConfigurationManager,
    num_input_channels: int,
    num_output_channels: int,
    enable_deep_supervision: bool = True,
) -> CMUNeXt:
    """CMUNeXt ``variant`` for a configuration of the plans.

    The published five stages are used, each taking its downsampling stride from the plans (so anisotropic 3D
    plans pool only where nnU-Net does); plans with fewer stages (small patches) give the first stages only.
    2D or 3D follows the configuration. Patch size, batch size and normalisation are the plans' own.
    """
    config = CMUNEXT_VARIANTS[variant]
    n_stages = min(len(config.dims), len(configuration_manager.pool_op_kernel_sizes))
    return CMUNeXt(
        num_input_channels,
        num_output_channels,
        config.truncated(n_stages),
        conv_op=conv_op_of(configuration_manager),
        strides=stage_strides(configuration_manager, n_stages),
        deep_supervision=enable_deep_supervision,
    )


class nnUNetTrainerCMUNeXt(nnUNetTrainerExtBase):
    """CMUNeXt (dims 16..256, depths 1,1,1,3,1, kernels 3,3,7,7,7; 3.15 M parameters at 3 channels / 1 class).

    Training recipe: nnU-Net's (SGD, momentum 0.99, Nesterov, lr 1e-2, poly; Dice + CE with deep supervision on
    every decoder level), kept so results compare with nnU-Net's; with it the demo (``nnUNetv2_ext_demo``, 12
    short epochs on synthetic multi-class data) reaches a held-out Dice of 0.96 without divergence. The published
    recipe (SGD momentum 0.9, weight decay 1e-4, BCE + Dice, 300 epochs at 256^2) was written for binary 2D tasks.
    """

    build_network_architecture = staticmethod(partial(build_cmunext, "cmunext"))


class nnUNetTrainerCMUNeXt_S(nnUNetTrainerCMUNeXt):
    """CMUNeXt-S (dims 8..128, kernels 3,3,7,7,9; 0.42 M parameters at 3 channels / 1 class)."""

    build_network_architecture = staticmethod(partial(build_cmunext, "cmunext_s"))


class nnUNetTrainerCMUNeXt_L(nnUNetTrainerCMUNeXt):
    """CMUNeXt-L (dims 32..512, depths 1,1,1,6,3; 8.29 M parameters at 3 channels / 1 class)."""

    build_network_architecture = staticmethod(partial(build_cmunext, "cmunext_l"))
