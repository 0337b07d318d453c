"""Ramp-ups of unsupervised loss weights, as the published schemes (MGCC, GuidedNet) use them via SSL4MIS.

Published constants are counted in training iterations: the weight is ``weight * sigmoid_rampup(iteration // 150,
200)``, i.e. the ramp advances every 150 iterations and saturates after 200 such steps (30 000 iterations).
"""

from __future__ import annotations

import math

#: SSL4MIS advances the ramp once every 150 iterations (``iter_num // 150``)
ITERATIONS_PER_RAMP_STEP = 150


def sigmoid_rampup(current: float, rampup_length: float) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = clip(current, 0, rampup_length) / rampup_length``; 1 for a zero length.

    The "Gaussian" ramp-up of Laine & Aila, Temporal Ensembling (arXiv 1610.02242, Sec. 3.1), as in SSL4MIS
    ``utils/ramps.py``.
    """
    if rampup_length == 0:
        return 1.0
    phase = 1.0 - min(max(current, 0.0), rampup_length) / rampup_length
    return math.exp(-5.0 * phase * phase)


def ramped_weight(
    weight: float, iteration: int, rampup_length: float, iterations_per_step: int = ITERATIONS_PER_RAMP_STEP
) -> float:
    """``weight * sigmoid_rampup(iteration // iterations_per_step, rampup_length)`` (SSL4MIS
    ``get_current_consistency_weight``), for the 0-based global training ``iteration``."""
    return weight * sigmoid_rampup(iteration // iterations_per_step, rampup_length)
