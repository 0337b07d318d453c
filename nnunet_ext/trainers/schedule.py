"""Shortened training schedules for smoke runs, set from the environment.

Unset, every trainer keeps nnU-Net's schedule (1000 epochs x 250 iterations, 50 validation iterations,
checkpoint every 50 epochs). For a quick run::

    nnUNet_ext_num_epochs=2 nnUNet_ext_num_iterations_per_epoch=10 nnUNet_ext_num_val_iterations_per_epoch=5 \\
        nnUNetv2_train 990 2d 0 -tr nnUNetTrainerCMUNeXt

The poly learning-rate schedule follows the shortened epoch count. Scheme ramp-ups keep the published schedule
(counted in iterations: MGCC's and GuidedNet's reach full weight after 30 000) unless ``nnUNet_ext_rampup=relative``
stretches each to the same fraction of this run that it takes of the published run (:func:`rampup_mode`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: environment variable -> nnUNetTrainer attribute it overrides
SCHEDULE_VARIABLES: dict[str, str] = {
    "nnUNet_ext_num_epochs": "num_epochs",
    "nnUNet_ext_num_iterations_per_epoch": "num_iterations_per_epoch",
    "nnUNet_ext_num_val_iterations_per_epoch": "num_val_iterations_per_epoch",
    "nnUNet_ext_save_every": "save_every",
}


def schedule_overrides(environ: Mapping[str, str] = os.environ) -> dict[str, int]:
    """Trainer attribute -> value for every schedule variable set in ``environ``.

    Raises:
        ValueError: a variable is set to anything but a positive integer (the message names it).
    """
    overrides = {}
    for variable, attribute in SCHEDULE_VARIABLES.items():
        value = environ.get(variable)
        if value is None or value.strip() == "":
            continue
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            raise ValueError(f"environment variable {variable}={value!r}: expected a positive integer")
        overrides[attribute] = number
    return overrides


#: environment variable choosing how semi-supervised ramp-ups are counted
RAMPUP_VARIABLE = "nnUNet_ext_rampup"
#: ``published``: the published iteration counts (default); ``relative``: scaled to the run's length
RAMPUP_MODES = ("published", "relative")


def rampup_mode(environ: Mapping[str, str] = os.environ) -> str:
    """How ramp-ups are counted (:data:`RAMPUP_MODES`), from ``nnUNet_ext_rampup``; unset: ``published``.

    Raises:
        ValueError: any other value (the message names the variable and the choices).
    """
    value = environ.get(RAMPUP_VARIABLE, "").strip() or RAMPUP_MODES[0]
    if value not in RAMPUP_MODES:
        raise ValueError(f"environment variable {RAMPUP_VARIABLE}={value!r}: expected one of {', '.join(RAMPUP_MODES)}")
    return value
