"""Shortened training schedules for smoke runs, set from the environment.

Unset, every trainer keeps nnU-Net's schedule (1000 epochs x 250 iterations, 50 validation iterations,
checkpoint every 50 epochs). For a quick run::

    nnUNet_ext_num_epochs=2 nnUNet_ext_num_iterations_per_epoch=10 nnUNet_ext_num_val_iterations_per_epoch=5 \\
        nnUNetv2_train 990 2d 0 -tr nnUNetTrainerCMUNeXt

The poly learning-rate schedule follows the shortened epoch count. Scheme constants counted in iterations
(ramp-ups) are not rescaled.
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
