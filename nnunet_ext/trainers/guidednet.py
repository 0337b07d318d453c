"""GuidedNet trainers: ``nnUNetTrainerGuidedNet`` (the plans' U-Net) and ``nnUNetTrainerGuidedNet_<architecture>``.

GuidedNet (Zhao et al., ACM MM 2024, arXiv 2408.04914; official code kimjisoo12/GuidedNet@3def342): two networks of
the same architecture with different initialisations, trained jointly on batches of labeled + unlabeled samples
(nnU-Net's batch, half/half, :class:`nnUNetTrainerSemiSupervisedBase`), with the loss of the official
``train_guidedNet_flare.py`` (:func:`nnunet_ext.ssl.guidednet.guidednet_loss`)::

    loss = sum_{n=1,2} [ sup_n + lambda (gmm_n + gmm_u_n + w(t) cons) ] + w(t) ktcps
    lambda = 0.3 ("lanmuda"), w(t) = 0.1 * sigmoid_rampup(iteration // 150, 200) ("consistency")

- ``sup_n``: nnU-Net's Dice + CE with deep supervision on network n's labeled half (the official code uses SSL4MIS's
  ``0.5 (CE + Dice)`` at one resolution; nnU-Net's loss keeps runs comparable with nnU-Net's trainers);
- ``gmm_n``, ``gmm_u_n``, ``cons``: 3D-CGMM (:mod:`nnunet_ext.ssl.cgmm`) on the full-resolution logits and the last
  decoder feature; ``cons`` is added once per network, i.e. twice, as in the official code;
- ``ktcps``: KT-CPS (:mod:`nnunet_ext.ssl.ktcps`) on the full-resolution logits of the whole batch, with one
  class-weight EMA state per network (``ktcps_shared_state = True``: the official single shared state).

The ramp is counted in nnU-Net iterations over the whole run (``global_iteration``, restored by ``--c``), or
relative to the run's length with ``nnUNet_ext_rampup=relative`` (``ramp_iteration``).

Under ``-num_gpus N`` both networks are DDP-wrapped, and the loss's batch statistics (the KT-CPS correct-voxel counts
and weighted mean, the CGMM class vectors) are summed over the ranks: the class weights stay identical on every rank
and a step's loss is that of the global batch (:mod:`nnunet_ext.ssl.ranks`).

Backbone: the plans' network (nnU-Net's PlainConvUNet, or the combined architecture), not the official 16-filter
3D U-Net with dropout; 3D-CGMM runs on its last decoder feature (32 channels for nnU-Net's U-Net, 16 officially).

Networks: network 1 is ``self.network`` with its builder's initialisation (nnU-Net's He/Kaiming init for the plans'
U-Net, as the official net1's ``kaiming_normal_``); network 2 (``self.network2``) is built the same way and its
convolution weights re-drawn with ``xavier_normal_`` (biases zero), as the official net2. Each has nnU-Net's optimizer
and poly schedule, from :meth:`nnUNetTrainerGuidedNet.optimizer_for` (SGD 1e-2, momentum 0.99, Nesterov; the official
recipe is SGD 0.1/0.9/1e-4 poly over 20 000 iterations; nnU-Net's recipe is kept so runs compare across
trainers).

Inference: ``nnUNetv2_predict -tr nnUNetTrainerGuidedNet`` uses **network 1** (``self.network``; the official
prediction scripts load one network): ``checkpoint_final.pth``/``checkpoint_best.pth`` hold network 1 in
``network_weights`` (network 2, its optimizer and the class weights only under ``semi_supervised_state``, which
inference ignores). For the average of both networks' probabilities, predict with
``-chk checkpoint_final_average.pth``, written at the end of training beside ``checkpoint_final.pth``
(:class:`~nnunet_ext.networks.features.FeatureNetwork`).

Combinations with another architecture are a subclass that takes the supervised trainer's builder::

    class nnUNetTrainerGuidedNet_CMUNeXt(nnUNetTrainerGuidedNet):
        supervised_trainer = nnUNetTrainerCMUNeXt

The architecture must follow the network contract (:mod:`nnunet_ext.networks.common`: ``decoder(skips,
return_features=True)`` with the last feature at full resolution) or be one of nnU-Net's U-Nets.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_ext.checkpoints import load_training_checkpoint
from nnunet_ext.networks.features import PARTNER_PREFIX, FeatureNetwork
from nnunet_ext.ssl.guidednet import CONSISTENCY_RAMPUP, PUBLISHED_ITERATIONS, guidednet_loss
from nnunet_ext.ssl.ktcps import KTCPSClassWeights
from nnunet_ext.ssl.ramps import ITERATIONS_PER_RAMP_STEP
from nnunet_ext.ssl.ranks import RankSum, single_process
from nnunet_ext.trainers.base import unwrap_module
from nnunet_ext.trainers.cmunext import nnUNetTrainerCMUNeXt
from nnunet_ext.trainers.gcgle import nnUNetTrainerGCGLE
from nnunet_ext.trainers.gct_unet import nnUNetTrainerGCTUNet
from nnunet_ext.trainers.gctx_unet import nnUNetTrainerGCTxUNet
from nnunet_ext.trainers.semi_supervised import CHECKPOINT_KEY, SemiSupervisedBatch, nnUNetTrainerSemiSupervisedBase
from nnunet_ext.trainers.steps import nnunet_sgd

#: file name of the two-network (averaged) export, for ``nnUNetv2_predict -chk``
AVERAGE_CHECKPOINT = "checkpoint_final_average.pth"


def build_feature_network(
    build_network_architecture: Callable[..., nn.Module],
    plans_manager: PlansManager,
    configuration_manager: ConfigurationManager,
    num_input_channels: int,
    num_output_channels: int,
    enable_deep_supervision: bool = True,
) -> FeatureNetwork:
    """``build_network_architecture(...)`` (a supervised trainer's staticmethod) wrapped to expose its last decoder
    feature; its state dict is the wrapped network's."""
    return FeatureNetwork(
        build_network_architecture(
            plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision
        )
    )


def guidednet_architecture(supervised_trainer: type[nnUNetTrainer]) -> staticmethod:
    """The ``build_network_architecture`` of a GuidedNet trainer on ``supervised_trainer``'s architecture."""
    return staticmethod(partial(build_feature_network, supervised_trainer.build_network_architecture))


def scheme_loss(
    networks: tuple[nn.Module, nn.Module],
    data: torch.Tensor,
    target: torch.Tensor | list[torch.Tensor],
    loss: nn.Module,
    class_weights: KTCPSClassWeights,
    iteration: int,
    sum_over_ranks: RankSum = single_process,
):
    """One forward of each network on the whole batch ``data`` (B, C, *S), labeled samples first; their supervised
    losses (``loss``, nnU-Net's Dice + CE with deep supervision, on the labeled samples of ``target``: (L, 1, *S) per
    deep-supervision scale) and :func:`~nnunet_ext.ssl.guidednet.guidednet_loss` on the full-resolution outputs
    (its batch statistics summed over the DDP ranks with ``sum_over_ranks``)."""
    full_target = target[0] if isinstance(target, list) else target
    num_labeled = full_target.shape[0]
    logits, features, supervised = [], [], []
    for network in networks:
        output, network_features = network(data, return_features=True)
        labeled_output = (
            [o[:num_labeled] for o in output] if isinstance(output, (list, tuple)) else output[:num_labeled]
        )
        supervised.append(loss(labeled_output, target))
        logits.append(output[0] if isinstance(output, (list, tuple)) else output)
        features.append(network_features)
    labels = full_target[:, 0].long()
    return guidednet_loss(logits, features, supervised, labels, class_weights, iteration, sum_over_ranks)


def xavier_initialise(network: nn.Module) -> None:
    """Official net2 initialisation: ``xavier_normal_`` convolution (and transposed convolution) weights, zero
    biases; normalisation layers keep theirs."""
    for module in network.modules():
        if isinstance(module, _ConvNd):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class nnUNetTrainerGuidedNet(nnUNetTrainerSemiSupervisedBase):
    """GuidedNet (two networks, 3D-CGMM, KT-CPS) on the plans' U-Net; see the module docstring.

    Subclasses that set ``supervised_trainer`` get that trainer's architecture (``build_network_architecture``); the
    benchmark compares their train step with that trainer's.
    """

    #: the supervised trainer whose network the scheme trains (nnU-Net's: the plans' U-Net)
    supervised_trainer: type[nnUNetTrainer] = nnUNetTrainer
    scheme_architecture = staticmethod(guidednet_architecture)
    build_network_architecture = guidednet_architecture(nnUNetTrainer)
    #: the official single KT-CPS class-weight state updated twice per iteration (default: one per network)
    ktcps_shared_state: bool = False
    rampup_iterations = CONSISTENCY_RAMPUP * ITERATIONS_PER_RAMP_STEP
    published_iterations = PUBLISHED_ITERATIONS

    def initialize(self):
        super().initialize()
        if self.label_manager.has_regions or self.label_manager.has_ignore_label:
            raise RuntimeError(
                f"{type(self).__name__}: GuidedNet needs plain label maps (one class per voxel); region-based "
                "training and the ignore label are not supported"
            )
        network2 = self.build_network_architecture(
            self.plans_manager,
            self.configuration_manager,
            self.num_input_channels,
            self.label_manager.num_segmentation_heads,
            self.enable_deep_supervision,
        )
        xavier_initialise(network2)
        self.register_network("network2", network2, *self.optimizer_for(network2))
        self.ktcps_weights = KTCPSClassWeights(
            self.label_manager.num_segmentation_heads, shared=self.ktcps_shared_state, device=self.device
        )
        self.register_state("ktcps_weights")

    def optimizer_for(self, network: nn.Module) -> tuple[torch.optim.Optimizer, PolyLRScheduler]:
        """Optimizer and schedule of either network: nnU-Net's (SGD, momentum 0.99, Nesterov, poly). A combination
        whose architecture needs another recipe overrides this one method."""
        optimizer = nnunet_sgd(network, self.initial_lr, self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def configure_optimizers(self):
        return self.optimizer_for(self.network)

    def on_train_start(self):
        super().on_train_start()
        if self.global_iteration == 0:  # a resumed run keeps its restored class weights
            self.initialise_scheme_state(self.labeled_class_histogram())

    def initialise_scheme_state(self, class_histogram: torch.Tensor) -> None:
        """The KT-CPS class weights of the labeled voxel counts (the official initial state)."""
        self.ktcps_weights.initialise(class_histogram)

    def labeled_class_histogram(self) -> torch.Tensor:
        """(K,) voxel counts per class over the fold's labeled training cases (the official initial KT-CPS counts;
        nnU-Net's ``-1`` outside-the-mask voxels are skipped)."""
        keys = self.ssl_fold.labeled if self.ssl_fold is not None else self.do_split()[0]
        dataset = self.dataset_class(self.preprocessed_dataset_folder, keys)
        num_classes = self.label_manager.num_segmentation_heads
        histogram = np.zeros(num_classes, dtype=np.int64)
        for key in keys:
            segmentation = np.asarray(dataset.load_case(key)[1][:]).ravel()
            histogram += np.bincount(segmentation[segmentation >= 0].astype(np.int64), minlength=num_classes)
        return torch.from_numpy(histogram).float()

    def compute_scheme_loss(self, batch: SemiSupervisedBatch):
        return scheme_loss(
            (self.network, self.network2),
            batch.data,
            batch.target,
            self.loss,
            self.ktcps_weights,
            self.ramp_iteration,
            self.sum_over_ranks,
        )

    def on_train_end(self):
        super().on_train_end()
        if self.local_rank == 0 and not self.disable_checkpointing:
            self.save_average_checkpoint()

    def save_average_checkpoint(self) -> None:
        """Write :data:`AVERAGE_CHECKPOINT`: ``checkpoint_final.pth`` with network 2's weights added as ``partner.*``
        and the training-only state left out, so ``nnUNetv2_predict -chk checkpoint_final_average.pth`` averages
        both networks' probabilities."""
        final = f"{self.output_folder}/checkpoint_final.pth"
        checkpoint = load_training_checkpoint(final)
        partner = {PARTNER_PREFIX + k: v for k, v in unwrap_module(self.network2).state_dict().items()}
        checkpoint["network_weights"] = {**checkpoint["network_weights"], **partner}
        for training_only in ("optimizer_state", "grad_scaler_state", CHECKPOINT_KEY):
            checkpoint.pop(training_only, None)
        torch.save(checkpoint, f"{self.output_folder}/{AVERAGE_CHECKPOINT}")


class nnUNetTrainerGuidedNet_CMUNeXt(nnUNetTrainerGuidedNet):
    """GuidedNet on CMUNeXt (``nnUNetTrainerCMUNeXt``'s network, 2D and 3D)."""

    supervised_trainer = nnUNetTrainerCMUNeXt


class nnUNetTrainerGuidedNet_GCGLE(nnUNetTrainerGuidedNet):
    """GuidedNet on GCGLE-Net (``nnUNetTrainerGCGLE``'s network, 2D only), with the scheme's recipe (nnU-Net's SGD)."""

    supervised_trainer = nnUNetTrainerGCGLE


class nnUNetTrainerGuidedNet_GCTxUNet(nnUNetTrainerGuidedNet):
    """GuidedNet on GCtx-UNet (``nnUNetTrainerGCTxUNet``'s network, 2D only), with the scheme's recipe (nnU-Net's
    SGD, not GCtx-UNet's AdamW: the two were not compared here)."""

    supervised_trainer = nnUNetTrainerGCTxUNet


class nnUNetTrainerGuidedNet_GCTUNet(nnUNetTrainerGuidedNet):
    """GuidedNet on the GCT-module U-Net (``nnUNetTrainerGCTUNet``'s network, 2D and 3D)."""

    supervised_trainer = nnUNetTrainerGCTUNet
