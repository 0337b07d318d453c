"""Seeds derived from tuples of integers, so every random draw has a fixed, independent stream.

Training step ``k`` of stage ``s`` draws from ``derived_seed(training_seed, s, k)`` (a resumed run repeats exactly
what an uninterrupted one does); synthetic image ``i`` of a run with seed ``S`` from ``derived_seed(S, i)`` (the
same image whichever process or batch samples it).
"""

from __future__ import annotations

import numpy as np

STAGE_KEYS = {"autoencoder": 1, "diffusion": 2}


def derived_seed(*keys: int) -> int:
    """A 64-bit seed from non-negative integers (numpy's ``SeedSequence`` hashing: distinct tuples, distinct seeds)."""
    high, low = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(high) << 32) | int(low)
