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


def require_2d(
    configuration_manager: ConfigurationManager, network: str, configuration: str = "", hint: str = ""
) -> None:
    """Raise a ValueError naming the supported configuration unless the configuration's patch is 2D (``network``
    is a 2D-only architecture; ``hint`` is appended to the message)."""
    patch = tuple(configuration_manager.patch_size)
    if len(patch) != 2:
        name = f"configuration {configuration!r}" if configuration else "the configuration"
        raise ValueError(
            f"{network} is a 2D network and supports 2D configurations only ('2d'); {name} has the {len(patch)}D "
            f"patch {list(patch)} (3d_fullres, 3d_lowres and 3d_cascade_fullres are not supported).{hint}"
        )
