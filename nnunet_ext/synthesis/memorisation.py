"""Memorisation check: is a synthetic image a copy of a training image?

Distances are root-mean-square differences in the model's space ([-1, 1], model resolution) after a Gaussian blur
(sigma 1 pixel) and area-downsampling to at most 64x64: the low-pass removes pixel noise, which a generator
reproducing a training image would not reproduce, while keeping the image content.

For every synthetic image the nearest training image is found. The threshold comes from the real data: for each
training image, the distance to its nearest training image of *another case* (slices of one volume are near
copies of each other), over at most ``max_reference_rows`` training images; ``threshold = fraction * q``, with ``q``
the ``quantile`` of these real-to-real distances (defaults: half of the 5th percentile). A synthetic image closer
than that to a training image is flagged as a copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter

COMPARISON_SIZE = 64
CHUNK = 256


def comparison_features(images: torch.Tensor) -> torch.Tensor:
    """``(N, C, R, R)`` -> ``(N, D)``; the Euclidean distance of two rows is the RMS difference of the images."""
    blurred = GaussianFilter(spatial_dims=2, sigma=1.0)(images.float())
    if blurred.shape[-1] > COMPARISON_SIZE:
        blurred = F.interpolate(blurred, size=(COMPARISON_SIZE, COMPARISON_SIZE), mode="area")
    flat = blurred.flatten(1)
    return flat / flat.shape[1] ** 0.5


def nearest(
    queries: torch.Tensor, references: torch.Tensor, excluded: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance to and index of each query's nearest reference; ``excluded[q, r]`` True skips a pair."""
    distances, indices = [], []
    for start in range(0, len(queries), CHUNK):
        block = torch.cdist(queries[start : start + CHUNK], references)
        if excluded is not None:
            block = block.masked_fill(excluded[start : start + CHUNK], float("inf"))
        value, index = block.min(dim=1)
        distances.append(value)
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


@dataclass(frozen=True)
class MemorisationReference:
    """Training-image features and the copy threshold derived from real-to-real distances."""

    features: torch.Tensor
    case_ids: list[str]
    threshold: float
    real_to_real: dict[str, float]

    def check(self, synthetic: torch.Tensor) -> tuple[list[float], list[str], list[bool]]:
        """For ``(N, C, R, R)`` synthetic images: nearest-training distance, its case, and whether it is a copy."""
        distances, indices = nearest(comparison_features(synthetic), self.features)
        return (
            [float(d) for d in distances],
            [self.case_ids[int(i)] for i in indices],
            [bool(d < self.threshold) for d in distances],
        )

    def summary(self) -> dict:
        return {
            "distance": "RMS difference in [-1, 1] after Gaussian blur (sigma 1 px) and area-downsampling to "
            f"<= {COMPARISON_SIZE} px",
            "threshold": self.threshold,
            "real_to_real_nearest_other_case": self.real_to_real,
        }


def build_reference(
    images: torch.Tensor,
    case_ids: Sequence[str],
    fraction: float = 0.5,
    quantile: float = 0.05,
    max_reference_rows: int = 2000,
) -> MemorisationReference:
    """Features of the training images ``(N, C, R, R)`` and the threshold (needs images of two cases at least)."""
    features = comparison_features(images)
    codes = torch.as_tensor(np.unique(np.asarray(case_ids), return_inverse=True)[1])
    rows = torch.arange(len(features))
    if len(rows) > max_reference_rows:
        rows = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:max_reference_rows]
    same_case = codes[rows][:, None] == codes[None, :]
    distances, _ = nearest(features[rows], features, excluded=same_case)
    values = distances.numpy()
    statistics = {
        "min": float(values.min()),
        f"q{round(quantile * 100):02d}": float(np.quantile(values, quantile)),
        "median": float(np.median(values)),
        "rows": len(values),
    }
    threshold = fraction * float(np.quantile(values, quantile))
    return MemorisationReference(features, list(case_ids), threshold, statistics)
