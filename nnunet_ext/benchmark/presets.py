"""Plans for benchmarking: a named preset or a configuration of a real plans file.

A preset is turned into a one-configuration nnU-Net plans dict whose default network is exactly what nnU-Net's
``ExperimentPlanner`` builds for that patch and spacing (its own ``get_pool_and_conv_props``, features
``min(32 * 2**i, 512 (2D) | 320 (3D))``, PlainConvUNet with InstanceNorm and LeakyReLU).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # nnunetv2's plans modules import torch: imported where used, so --help stays fast
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager


@dataclass(frozen=True)
class BenchmarkPreset:
    """Patch, spacing, batch and channel/class counts of one benchmark setting."""

    patch_size: tuple[int, ...]
    batch_size: int
    input_channels: int
    num_classes: int
    spacing: tuple[float, ...] | None = None


PRESETS: dict[str, BenchmarkPreset] = {
    "2d_256": BenchmarkPreset(patch_size=(256, 256), batch_size=4, input_channels=3, num_classes=2),
    "2d_224": BenchmarkPreset(patch_size=(224, 224), batch_size=4, input_channels=3, num_classes=9),
    # ACDC-like 2D plan: nnU-Net's 2d patch for Dataset027_ACDC, cine-MRI (1 channel, background + 3 structures)
    "2d_acdc": BenchmarkPreset(patch_size=(256, 224), batch_size=14, input_channels=1, num_classes=4),
    # a small 2D plan: what nnU-Net plans for a dataset of small 2D images (1 channel, background + 1 structure)
    "2d_small": BenchmarkPreset(patch_size=(80, 112), batch_size=5, input_channels=1, num_classes=2),
    "3d_96": BenchmarkPreset(patch_size=(96, 96, 96), batch_size=2, input_channels=1, num_classes=2),
    "3d_aniso": BenchmarkPreset(
        patch_size=(32, 128, 128), batch_size=2, input_channels=1, num_classes=2, spacing=(3.0, 1.0, 1.0)
    ),
}


def plans_for_preset(name: str, preset: BenchmarkPreset) -> dict:
    """A plans dict with one configuration ``name`` holding nnU-Net's default network for ``preset``."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    spacing = preset.spacing or (1.0,) * len(preset.patch_size)
    dim = len(preset.patch_size)
    _, strides, kernels, patch_size, _ = get_pool_and_conv_props(spacing, preset.patch_size, 4, 999999)
    if tuple(patch_size) != tuple(preset.patch_size):
        raise ValueError(f"preset {name}: patch {preset.patch_size} is not divisible as nnU-Net requires")
    n_stages = len(strides)
    max_features = 512 if dim == 2 else 320
    conv, norm = ("Conv2d", "InstanceNorm2d") if dim == 2 else ("Conv3d", "InstanceNorm3d")
    configuration = {
        "data_identifier": f"benchmark_{name}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": preset.batch_size,
        "patch_size": list(preset.patch_size),
        "median_image_size_in_voxels": list(preset.patch_size),
        "spacing": list(spacing),
        "normalization_schemes": ["ZScoreNormalization"] * preset.input_channels,
        "use_mask_for_norm": [False] * preset.input_channels,
        "batch_dice": True,
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n_stages,
                "features_per_stage": [min(max_features, 32 * 2**i) for i in range(n_stages)],
                "conv_op": f"torch.nn.modules.conv.{conv}",
                "kernel_sizes": kernels,
                "strides": strides,
                "n_conv_per_stage": [2] * n_stages,
                "n_conv_per_stage_decoder": [2] * (n_stages - 1),
                "conv_bias": True,
                "norm_op": f"torch.nn.modules.instancenorm.{norm}",
                "norm_op_kwargs": {"eps": 1e-5, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
    }
    return {
        "dataset_name": f"Benchmark_{name}",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": list(preset.patch_size),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(range(dim)),
        "transpose_backward": list(range(dim)),
        "configurations": {name: configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
    }


@dataclass(frozen=True)
class BenchmarkSetting:
    """Everything a measurement needs: the plans, the configuration, batch and channel/class counts."""

    label: str
    plans: dict
    configuration: str
    batch_size: int
    input_channels: int
    num_classes: int

    @property
    def plans_manager(self) -> PlansManager:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        return PlansManager(self.plans)

    @property
    def configuration_manager(self) -> ConfigurationManager:
        return self.plans_manager.get_configuration(self.configuration)

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(self.configuration_manager.patch_size)


def setting_from_preset(name: str, batch_size: int | None = None) -> BenchmarkSetting:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    preset = PRESETS[name]
    return BenchmarkSetting(
        label=f"preset {name}",
        plans=plans_for_preset(name, preset),
        configuration=name,
        batch_size=batch_size or preset.batch_size,
        input_channels=preset.input_channels,
        num_classes=preset.num_classes,
    )


def setting_from_plans(
    plans_file: str | Path,
    configuration: str,
    batch_size: int | None = None,
    input_channels: int | None = None,
    num_classes: int | None = None,
) -> BenchmarkSetting:
    """A configuration of a real plans file; channels and classes default to the ``dataset.json`` beside it."""
    plans_file = Path(plans_file)
    plans = json.loads(plans_file.read_text())
    if configuration not in plans.get("configurations", {}):
        raise ValueError(f"{plans_file}: no configuration {configuration!r} (has {sorted(plans['configurations'])})")
    dataset_json_file = plans_file.parent / "dataset.json"
    if input_channels is None or num_classes is None:
        if not dataset_json_file.is_file():
            raise FileNotFoundError(
                f"{dataset_json_file} not found: pass --input-channels and --num-classes for {plans_file}"
            )
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        dataset_json = json.loads(dataset_json_file.read_text())
        label_manager = PlansManager(plans).get_label_manager(dataset_json)
        input_channels = input_channels or len(dataset_json["channel_names"])
        num_classes = num_classes or label_manager.num_segmentation_heads
    setting = BenchmarkSetting(
        label=f"{plans_file.name}:{configuration}",
        plans=plans,
        configuration=configuration,
        batch_size=0,
        input_channels=input_channels,
        num_classes=num_classes,
    )
    return replace(setting, batch_size=batch_size or setting.configuration_manager.batch_size)
