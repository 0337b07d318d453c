"""``nnUNetTrainerGCTUNet``: the conv U-Net with GCT modules, on the plans' U-Net topology (2D and 3D)."""

from __future__ import annotations

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_ext.networks.gct_unet import GCTUNet
from nnunet_ext.trainers.base import nnUNetTrainerExtBase
from nnunet_ext.trainers.plans import conv_op_of


def build_gct_unet(
    plans_manager: PlansManager,
    configuration_manager: ConfigurationManager,
    num_input_channels: int,
    num_output_channels: int,
    enable_deep_supervision: bool = True,
) -> GCTUNet:
    """GCT-UNet with the stages, features, kernels, strides and convs per stage of the plans' U-Net."""
    arch = configuration_manager.network_arch_init_kwargs
    n_convs = arch.get("n_conv_per_stage", arch.get("n_blocks_per_stage"))
    if n_convs is None or "features_per_stage" not in arch:
        raise ValueError(
            f"GCT-UNet reads the U-Net topology from the plans, but {configuration_manager.network_arch_class_name} "
            "has no features_per_stage / n_conv_per_stage"
        )
    return GCTUNet(
        num_input_channels,
        num_output_channels,
        features=arch["features_per_stage"],
        kernels=arch["kernel_sizes"],
        strides=arch["strides"],
        n_convs=n_convs,
        n_convs_decoder=arch.get("n_conv_per_stage_decoder", 2),
        conv_op=conv_op_of(configuration_manager),
        deep_supervision=enable_deep_supervision,
    )


class nnUNetTrainerGCTUNet(nnUNetTrainerExtBase):
    """U-Net with a GCT module after every encoder stage (bottleneck included), every decoder stage and every skip.

    Training recipe: nnU-Net's (SGD, momentum 0.99, Nesterov, lr 1e-2, poly; Dice + CE with deep supervision on
    every decoder stage): the backbone is nnU-Net's InstanceNorm conv U-Net, for which this recipe is tuned; the
    GCT gates are residual (``Y = X a_c a_s + X``) and do not change that. No comparative measurement was made.
    """

    build_network_architecture = staticmethod(build_gct_unet)
