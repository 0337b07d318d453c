"""Registry of the trainers nnunet_ext ships, by name.

Trainer class names are API: nnU-Net stores ``trainer_name`` in every checkpoint and names result folders
``{trainer}__{plans}__{configuration}``, so a name, once released, is never renamed or removed.

This module is read by ``setup.py`` (to declare the ``nnunetv2.trainers`` entry points) and by the startup
hook, so it must import nothing beyond the standard library.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "nnunetv2.trainers"

#: trainer name -> "module:attribute"
TRAINERS: dict[str, str] = {
    "nnUNetTrainerCMUNeXt": "nnunet_ext.trainers.cmunext:nnUNetTrainerCMUNeXt",
    "nnUNetTrainerCMUNeXt_S": "nnunet_ext.trainers.cmunext:nnUNetTrainerCMUNeXt_S",
    "nnUNetTrainerCMUNeXt_L": "nnunet_ext.trainers.cmunext:nnUNetTrainerCMUNeXt_L",
    "nnUNetTrainerGCGLE": "nnunet_ext.trainers.gcgle:nnUNetTrainerGCGLE",
    "nnUNetTrainerGCTxUNet": "nnunet_ext.trainers.gctx_unet:nnUNetTrainerGCTxUNet",
    "nnUNetTrainerGCTxUNet_MLP3": "nnunet_ext.trainers.gctx_unet:nnUNetTrainerGCTxUNet_MLP3",
    "nnUNetTrainerGCTUNet": "nnunet_ext.trainers.gct_unet:nnUNetTrainerGCTUNet",
    "nnUNetTrainerMGCC": "nnunet_ext.trainers.mgcc:nnUNetTrainerMGCC",
    "nnUNetTrainerMGCC_CMUNeXt": "nnunet_ext.trainers.mgcc:nnUNetTrainerMGCC_CMUNeXt",
    "nnUNetTrainerMGCC_GCGLE": "nnunet_ext.trainers.mgcc:nnUNetTrainerMGCC_GCGLE",
    "nnUNetTrainerMGCC_GCTxUNet": "nnunet_ext.trainers.mgcc:nnUNetTrainerMGCC_GCTxUNet",
    "nnUNetTrainerMGCC_GCTUNet": "nnunet_ext.trainers.mgcc:nnUNetTrainerMGCC_GCTUNet",
    "nnUNetTrainerGuidedNet": "nnunet_ext.trainers.guidednet:nnUNetTrainerGuidedNet",
    "nnUNetTrainerGuidedNet_CMUNeXt": "nnunet_ext.trainers.guidednet:nnUNetTrainerGuidedNet_CMUNeXt",
    "nnUNetTrainerGuidedNet_GCGLE": "nnunet_ext.trainers.guidednet:nnUNetTrainerGuidedNet_GCGLE",
    "nnUNetTrainerGuidedNet_GCTxUNet": "nnunet_ext.trainers.guidednet:nnUNetTrainerGuidedNet_GCTxUNet",
    "nnUNetTrainerGuidedNet_GCTUNet": "nnunet_ext.trainers.guidednet:nnUNetTrainerGuidedNet_GCTUNet",
    "nnUNetTrainerLabeledOnly": "nnunet_ext.trainers.labeled_only:nnUNetTrainerLabeledOnly",
    "nnUNetTrainerLabeledOnly_CMUNeXt": "nnunet_ext.trainers.labeled_only:nnUNetTrainerLabeledOnly_CMUNeXt",
    "nnUNetTrainerLabeledOnly_GCGLE": "nnunet_ext.trainers.labeled_only:nnUNetTrainerLabeledOnly_GCGLE",
    "nnUNetTrainerLabeledOnly_GCTxUNet": "nnunet_ext.trainers.labeled_only:nnUNetTrainerLabeledOnly_GCTxUNet",
    "nnUNetTrainerLabeledOnly_GCTUNet": "nnunet_ext.trainers.labeled_only:nnUNetTrainerLabeledOnly_GCTUNet",
}


#: name prefix of the planners ``nnUNetv2_plan_experiment -pl`` resolves (``ExtPlanner_<trainer>``) and the factory
#: that builds them; the memory advice trainers log at the start of GPU training. Both live in the planning layer,
#: above the trainers, and are reached by name as the trainers are.
PLANNER_PREFIX = "ExtPlanner_"
PLANNER_FACTORY = "nnunet_ext.planning.planner:planner_for_trainer"
MEMORY_ADVICE = "nnunet_ext.planning.advice:memory_advice"


def load_target(target: str):
    """The attribute a ``"module:attribute"`` target names (its module imported)."""
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def entry_point_specs() -> list[str]:
    """The ``name = module:attribute`` lines for ``setup(entry_points={ENTRY_POINT_GROUP: ...})``."""
    return [f"{name} = {target}" for name, target in TRAINERS.items()]


def registered_trainer_names() -> list[str]:
    """Names of nnunet_ext's own trainers followed by those other installed plugins register."""
    others = [ep.name for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in TRAINERS]
    return list(TRAINERS) + sorted(set(others))


def find_registered_trainer(trainer_name: str) -> type | None:
    """Import and return the trainer class registered under ``trainer_name``, or None if none is.

    nnunet_ext's own table is consulted first (so a development checkout resolves new trainers before its
    installed metadata is refreshed), then the ``nnunetv2.trainers`` entry points of every installed
    distribution.
    """
    target = TRAINERS.get(trainer_name)
    if target is not None:
        return load_target(target)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == trainer_name:
            return ep.load()
    return None
