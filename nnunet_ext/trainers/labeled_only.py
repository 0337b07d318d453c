"""Supervised-only baselines of the semi-supervised trainers: supervised training on a fold's labeled subset of
``splits_ssl.json`` (``nnUNetv2_ext_ssl_split``) only.

A semi-supervised result means something next to supervised training of the same architecture on the same labeled
cases with the same budget. ``nnUNetTrainerLabeledOnly`` is nnU-Net's supervised training of the plans' U-Net (the
architecture of ``nnUNetTrainerGuidedNet``) on the fold's labeled subset only; ``nnUNetTrainerLabeledOnly_<arch>``
the same for an nnunet_ext architecture (the baseline of ``nnUNetTrainerMGCC_<arch>`` and
``nnUNetTrainerGuidedNet_<arch>``).
Validation cases are the fold's, as for the schemes; the label-less cases of the fold are not used. Like every
nnunet_ext trainer they honour the schedule variables (:mod:`nnunet_ext.trainers.schedule`), so both sides of a
comparison can be given the same shortened budget::

    nnUNetv2_ext_ssl_split -d 27 --labeled-fraction 0.1
    nnUNetv2_train 27 2d 0 -tr nnUNetTrainerLabeledOnly_CMUNeXt
    nnUNetv2_train 27 2d 0 -tr nnUNetTrainerMGCC_CMUNeXt
"""

from __future__ import annotations

from nnunet_ext.trainers.base import nnUNetTrainerExtBase
from nnunet_ext.trainers.cmunext import nnUNetTrainerCMUNeXt
from nnunet_ext.trainers.gcgle import nnUNetTrainerGCGLE
from nnunet_ext.trainers.gct_unet import nnUNetTrainerGCTUNet
from nnunet_ext.trainers.gctx_unet import nnUNetTrainerGCTxUNet
from nnunet_ext.trainers.labeled_subset import LabeledSubsetSplit


class nnUNetTrainerLabeledOnly(LabeledSubsetSplit, nnUNetTrainerExtBase):
    """nnU-Net's default training (plans' U-Net) on the fold's labeled subset only."""


class nnUNetTrainerLabeledOnly_CMUNeXt(LabeledSubsetSplit, nnUNetTrainerCMUNeXt):
    """:class:`~nnunet_ext.trainers.cmunext.nnUNetTrainerCMUNeXt` on the fold's labeled subset only."""


class nnUNetTrainerLabeledOnly_GCGLE(LabeledSubsetSplit, nnUNetTrainerGCGLE):
    """:class:`~nnunet_ext.trainers.gcgle.nnUNetTrainerGCGLE` on the fold's labeled subset only."""


class nnUNetTrainerLabeledOnly_GCTxUNet(LabeledSubsetSplit, nnUNetTrainerGCTxUNet):
    """:class:`~nnunet_ext.trainers.gctx_unet.nnUNetTrainerGCTxUNet` on the fold's labeled subset only."""


class nnUNetTrainerLabeledOnly_GCTUNet(LabeledSubsetSplit, nnUNetTrainerGCTUNet):
    """:class:`~nnunet_ext.trainers.gct_unet.nnUNetTrainerGCTUNet` on the fold's labeled subset only."""
