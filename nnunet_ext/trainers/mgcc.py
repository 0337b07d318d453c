"""MGCC semi-supervised trainers: ``nnUNetTrainerMGCC`` (the published network) and MGCC on other backbones.

The scheme (:mod:`nnunet_ext.networks.mgcc`, :mod:`nnunet_ext.ssl.mgcc_loss`) is written against the network
contract, so MGCC on another architecture is a subclass naming that architecture's supervised trainer::

    class nnUNetTrainerMGCC_CMUNeXt(nnUNetTrainerMGCC):
        supervised_trainer = nnUNetTrainerCMUNeXt

plus its line in :data:`nnunet_ext.registration.TRAINERS`. The backbone's encoder is shared, the ConvMixer chain
sits on its bottleneck, and three further instances of its decoder are the auxiliary decoders.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_ext.networks.common import SegmentationNetwork
from nnunet_ext.networks.mgcc import MGCC_DIMS, MGCCNetwork, mgcc_from_backbones, mgcc_unet
from nnunet_ext.ssl.mgcc_loss import CONSISTENCY_RAMPUP, PUBLISHED_ITERATIONS, MGCCObjective, consistency_weight
from nnunet_ext.ssl.ramps import ITERATIONS_PER_RAMP_STEP
from nnunet_ext.trainers.cmunext import nnUNetTrainerCMUNeXt
from nnunet_ext.trainers.gcgle import nnUNetTrainerGCGLE
from nnunet_ext.trainers.gct_unet import nnUNetTrainerGCTUNet
from nnunet_ext.trainers.gctx_unet import nnUNetTrainerGCTxUNet
from nnunet_ext.trainers.plans import conv_op_of, stage_strides
from nnunet_ext.trainers.semi_supervised import SemiSupervisedBatch, nnUNetTrainerSemiSupervisedBase

#: ``build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
#: enable_deep_supervision)`` of a supervised trainer
BackboneBuilder = Callable[[PlansManager, ConfigurationManager, int, int, bool], nn.Module]


def build_mgcc_unet(
    plans_manager: PlansManager,
    configuration_manager: ConfigurationManager,
    num_input_channels: int,
    num_output_channels: int,
    enable_deep_supervision: bool = True,
) -> SegmentationNetwork:
    """The published MGCC backbone (U-Net encoder 64..1024 + MSAG decoder) for a configuration of the plans.

    Five stages with the plans' strides (anisotropic 3D plans pool only where nnU-Net does); plans with fewer
    stages (small patches) give the first stages only.
    """
    n_stages = min(len(MGCC_DIMS), len(configuration_manager.pool_op_kernel_sizes))
    return mgcc_unet(
        num_input_channels,
        num_output_channels,
        MGCC_DIMS[:n_stages],
        conv_op=conv_op_of(configuration_manager),
        strides=stage_strides(configuration_manager, n_stages),
        deep_supervision=enable_deep_supervision,
    )


def build_mgcc_network(
    build_backbone: BackboneBuilder,
    plans_manager: PlansManager,
    configuration_manager: ConfigurationManager,
    num_input_channels: int,
    num_output_channels: int,
    enable_deep_supervision: bool = True,
) -> MGCCNetwork:
    """MGCC around the network ``build_backbone`` builds for the plans (see :func:`mgcc_from_backbones`)."""

    def backbone() -> nn.Module:
        return build_backbone(
            plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision
        )

    return mgcc_from_backbones(backbone, num_input_channels, configuration_manager.patch_size)


def mgcc_architecture(backbone: type | BackboneBuilder) -> staticmethod:
    """``build_network_architecture`` of MGCC on ``backbone``: a supervised trainer class (its
    ``build_network_architecture`` is used) or a builder with that signature."""
    build = backbone.build_network_architecture if isinstance(backbone, type) else backbone
    return staticmethod(partial(build_mgcc_network, build))


class nnUNetTrainerMGCC(nnUNetTrainerSemiSupervisedBase):
    """MGCC (Tang et al., arXiv 2305.09447) on its published network: U-Net encoder 64..1024, three ConvMixer
    blocks (depth 3, k 7) on the bottleneck, main + three auxiliary MSAG decoders.

    Scheme constants are the published ones: half labeled / half unlabeled per batch, supervised BCE/CE + Dice on the
    labeled half averaged over the four heads, MSE consistency between the main and each auxiliary probability map on
    the unlabeled half with weight ``7 * sigmoid_rampup(iteration // 150, 200)`` in nnU-Net iterations (the 0-based
    global iteration, restored on ``--c``; relative to the run's length with ``nnUNet_ext_rampup=relative``). Deep
    supervision on the main decoder as nnU-Net does.

    Training recipe: nnU-Net's (SGD momentum 0.99 Nesterov, lr 1e-2, weight decay 3e-5, poly, 1000 x 250
    iterations, nnU-Net's augmentation), kept so results compare with nnU-Net's; it was not compared here with the
    published SGD 0.9 / 1e-4 for 20 000 iterations (written for binary 2D tasks at 256^2). Inference: the main
    decoder only. Ignore labels are not supported (the published losses have no masked form).

    Under ``-num_gpus N`` every loss term is a mean over samples, so a step is that of the global batch, except that
    the perturbations shared by a batch (feature-dropout threshold, feature noise) are drawn per rank.
    """

    scheme_architecture = staticmethod(mgcc_architecture)
    build_network_architecture = mgcc_architecture(build_mgcc_unet)
    rampup_iterations = CONSISTENCY_RAMPUP * ITERATIONS_PER_RAMP_STEP
    published_iterations = PUBLISHED_ITERATIONS

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.label_manager.has_ignore_label:
            raise ValueError(f"{type(self).__name__} does not support datasets with an ignore label")
        self.objective: MGCCObjective | None = None

    def _build_loss(self) -> nn.Module:
        """The MGCC supervised loss of the main decoder, with nnU-Net's deep-supervision weights; it is also the
        validation loss. The full step objective is kept as ``self.objective``."""
        nnunet_loss = super()._build_loss()
        weights = nnunet_loss.weight_factors if isinstance(nnunet_loss, DeepSupervisionWrapper) else None
        self.objective = MGCCObjective(self.label_manager.has_regions, weights)
        return self.objective.main_loss

    def compute_scheme_loss(self, batch: SemiSupervisedBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        outputs = self.network(batch.data)
        return self.objective(outputs, batch.target, batch.num_labeled, consistency_weight(self.ramp_iteration))


class nnUNetTrainerMGCC_CMUNeXt(nnUNetTrainerMGCC):
    """MGCC on CMUNeXt (:class:`nnunet_ext.trainers.cmunext.nnUNetTrainerCMUNeXt`); 2D and 3D."""

    supervised_trainer = nnUNetTrainerCMUNeXt


class nnUNetTrainerMGCC_GCGLE(nnUNetTrainerMGCC):
    """MGCC on GCGLE-Net (:class:`nnunet_ext.trainers.gcgle.nnUNetTrainerGCGLE`); 2D only.

    Trained with the scheme's recipe (nnU-Net's SGD), not GCGLE-Net's SGD 0.9: the two were not compared here.
    """

    supervised_trainer = nnUNetTrainerGCGLE


class nnUNetTrainerMGCC_GCTxUNet(nnUNetTrainerMGCC):
    """MGCC on GCtx-UNet (:class:`nnunet_ext.trainers.gctx_unet.nnUNetTrainerGCTxUNet`); 2D only.

    Trained with the scheme's recipe (nnU-Net's SGD), not GCtx-UNet's AdamW: the two were not compared here.
    """

    supervised_trainer = nnUNetTrainerGCTxUNet


class nnUNetTrainerMGCC_GCTUNet(nnUNetTrainerMGCC):
    """MGCC on the GCT-module U-Net (:class:`nnunet_ext.trainers.gct_unet.nnUNetTrainerGCTUNet`); 2D and 3D."""

    supervised_trainer = nnUNetTrainerGCTUNet
