"""A second progress plot beside nnU-Net's ``progress.png``: one curve per loss term a trainer logs."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("agg")  # a file backend, as nnU-Net's logger selects
import matplotlib.pyplot as plt


def plot_loss_terms(terms: Mapping[str, Sequence[float]], path: str | os.PathLike) -> None:
    """Write ``path`` (PNG): each term's per-epoch value against the epoch, one panel per term, shared x axis.

    Args:
        terms: term name -> one value per epoch (NaN where it was not computed).
    """
    names = sorted(terms)
    figure, axes = plt.subplots(len(names), 1, figsize=(12, 3 * len(names)), sharex=True, squeeze=False)
    for axis, name in zip(axes[:, 0], names):
        values = list(terms[name])
        axis.plot(range(len(values)), values, color="b", linewidth=2)
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("epoch")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
