"""Reading what a network needs from nnU-Net's plans."""

from __future__ import annotations

from dynamic_network_architectures.building_blocks.helper import convert_dim_to_conv_op
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from torch.nn.modules.conv import _ConvNd


def conv_op_of(configuration_manager: ConfigurationManager) -> type[_ConvNd]:
    """``nn.Conv2d`` for a 2D configuration, ``nn.Conv3d`` for a 3D one."""
    return convert_dim_to_conv_op(len(configuration_manager.patch_size))


def stage_strides(configuration_manager: ConfigurationManager, n_stages: int) -> list[tuple[int, ...]]:
    """Downsampling strides between the first ``n_stages`` stages of the plans (``n_stages - 1`` entries).

    The plans' strides (``pool_op_kernel_sizes``) list one entry per stage, the first being all ones; the
    patch size is divisible by their product, so any prefix of them is valid for the patch.
    """
    plan_strides = configuration_manager.pool_op_kernel_sizes
    if n_stages > len(plan_strides):
        raise ValueError(f"the plans have {len(plan_strides)} stages, {n_stages} were requested")
    return [tuple(int(s) for s in stride) for stride in plan_strides[1:n_stages]]
