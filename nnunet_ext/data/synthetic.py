"""A synthetic nnU-Net raw dataset, 2D (PNG) or 3D (NIfTI), for tests and the demo.

Every case shows one object of each foreground class, two unlabeled distractor blobs, a smooth bias field and
Gaussian noise:

- ``disc`` (label 1): a filled disc / ball;
- ``box`` (label 2): an axis-aligned box with a stripe texture;
- ``ring`` (label 3): an annulus / hollow shell.

All objects and distractors share one intensity range, and gain and offset vary per case, so intensity alone
separates nothing: a network has to learn shape, edges and texture, and a short nnU-Net run reaches a Dice that is
clearly above chance but not perfect.
Additional channels (``num_channels > 1``) are differently contrasted, independently noised views.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image
from scipy.ndimage import gaussian_filter

from nnunet_ext.data.atomic import atomic_directory

LABELS = {"background": 0, "disc": 1, "box": 2, "ring": 3}


@dataclass(frozen=True)
class SyntheticDatasetSpec:
    """What to generate. ``shape`` has 2 entries for a 2D (PNG) dataset and 3 (z, y, x) for 3D (NIfTI)."""

    dataset_id: int = 990
    name: str = "Synthetic"
    shape: tuple[int, ...] = (128, 128)
    spacing: tuple[float, ...] | None = None
    num_training: int = 20
    num_test: int = 4
    num_channels: int = 1
    seed: int = 0

    @property
    def dim(self) -> int:
        return len(self.shape)

    @property
    def folder_name(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.name}"

    @property
    def file_ending(self) -> str:
        return ".png" if self.dim == 2 else ".nii.gz"

    @property
    def voxel_spacing(self) -> tuple[float, ...]:
        return tuple(self.spacing) if self.spacing is not None else (1.0,) * self.dim

    def validate(self) -> None:
        if self.dim not in (2, 3):
            raise ValueError(f"shape must have 2 or 3 entries, got {self.shape}")
        if min(self.shape) < 16:
            raise ValueError(f"every axis of shape must be at least 16, got {self.shape}")
        if self.dim == 2 and self.spacing is not None:
            raise ValueError("spacing is only meaningful for 3D (PNG images carry no spacing)")
        if len(self.voxel_spacing) != self.dim or min(self.voxel_spacing) <= 0:
            raise ValueError(f"spacing must give a positive value per axis of {self.shape}, got {self.spacing}")
        if not 0 < self.dataset_id < 1000:
            raise ValueError(f"dataset_id must be in 1..999, got {self.dataset_id}")
        if self.num_training < 1 or self.num_test < 0 or self.num_channels < 1:
            raise ValueError("num_training >= 1, num_test >= 0 and num_channels >= 1 are required")


def _free_centre(
    extent: np.ndarray, radius: float, placed: list[tuple[np.ndarray, float]], rng: np.random.Generator
) -> np.ndarray:
    """A centre keeping the object inside the image and, within 50 tries, apart from the objects placed."""
    centre = rng.uniform(radius, extent - radius)
    for _ in range(50):
        if all(np.linalg.norm(centre - other) > radius + other_radius for other, other_radius in placed):
            break
        centre = rng.uniform(radius, extent - radius)
    return centre


def _object(
    class_value: int, offset: np.ndarray, coords: np.ndarray, radius: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Mask (flat, over all pixels) and intensity (scalar or flat) of one object of ``class_value``.

    ``offset`` (D, N) holds every pixel's physical offset from the object's centre.
    """
    distance = np.linalg.norm(offset, axis=0)
    if class_value == 1:
        return distance < radius, rng.uniform(0.3, 0.5)
    if class_value == 2:
        half = radius * rng.uniform(0.6, 1.0, size=len(offset))[:, None]
        stripes = 0.12 * np.sin(2 * np.pi * coords[-1].ravel() / rng.uniform(3, 6))
        return np.all(np.abs(offset) < half, axis=0), rng.uniform(0.25, 0.45) + stripes
    return (distance < radius) & (distance > 0.55 * radius), rng.uniform(0.3, 0.5)


def synthesize_case(
    shape: Sequence[int], spacing: Sequence[float], num_channels: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One case: ``image`` float32 (C, *shape) in [0, 1] and ``label`` uint8 (*shape) with values of LABELS.

    Besides one object per class, two unlabeled distractors (soft-edged blobs of the same intensity range) and a
    smooth bias field are added, the objects' edges are slightly blurred and Gaussian noise is added.
    """
    shape = tuple(shape)
    coords = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"))
    flat_coords = coords.reshape(len(shape), -1)
    extent = np.array([n * s for n, s in zip(shape, spacing)])
    size = float(extent.min())
    label = np.zeros(int(np.prod(shape)), dtype=np.uint8)
    signal = np.zeros(label.shape, dtype=np.float32)
    placed: list[tuple[np.ndarray, float]] = []
    for class_value in [*rng.permutation([1, 2, 3]), 0, 0]:
        radius = rng.uniform(0.1, 0.18) * size
        centre = _free_centre(extent, radius, placed, rng)
        placed.append((centre, radius))
        offset = flat_coords - centre[:, None]
        if class_value == 0:
            squared = np.sum((offset / (0.6 * radius)) ** 2, axis=0)
            signal += rng.uniform(0.3, 0.5) * np.exp(-squared)
            continue
        mask, intensity = _object(class_value, offset, coords, radius, rng)
        label[mask] = class_value
        signal[mask] = np.broadcast_to(intensity, label.shape)[mask]
    signal = gaussian_filter(signal.reshape(shape), sigma=0.7 / np.asarray(spacing))
    bias_field = gaussian_filter(rng.normal(size=shape), sigma=[n / 8 for n in shape])
    bias_field = 0.2 * bias_field / (np.abs(bias_field).max() + 1e-8)
    channels = []
    for channel in range(num_channels):
        view = signal if channel == 0 else 0.6 - 0.8 * signal
        gain, bias = rng.uniform(0.8, 1.2), rng.uniform(0.15, 0.3)
        noisy = gain * (view + bias_field) + bias + rng.normal(scale=0.12, size=shape)
        channels.append(np.clip(noisy, 0, 1))
    return np.stack(channels).astype(np.float32), label.reshape(shape)


def _write_2d(image: np.ndarray, label: np.ndarray, image_stem: Path, label_path: Path | None) -> None:
    for channel, data in enumerate(image):
        Image.fromarray(np.round(data * 255).astype(np.uint8)).save(f"{image_stem}_{channel:04d}.png")
    if label_path is not None:
        Image.fromarray(label).save(label_path)


def _write_3d(
    image: np.ndarray, label: np.ndarray, spacing: Sequence[float], image_stem: Path, label_path: Path | None
) -> None:
    def save(array: np.ndarray, path: str) -> None:
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing(tuple(float(s) for s in reversed(spacing)))
        sitk.WriteImage(itk, path, useCompression=True)

    for channel, data in enumerate(image):
        save((data * 1000).astype(np.float32), f"{image_stem}_{channel:04d}.nii.gz")
    if label_path is not None:
        save(label, str(label_path))


def generate_synthetic_dataset(
    spec: SyntheticDatasetSpec, raw_root: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Write ``spec`` as ``raw_root/DatasetXXX_Name`` (imagesTr, labelsTr, imagesTs, labelsTs, dataset.json).

    The folder appears complete or not at all. Returns its path.

    Raises:
        FileExistsError: the dataset folder exists and ``overwrite`` is False.
        ValueError: ``spec`` is inconsistent.
    """
    spec.validate()
    rng = np.random.default_rng(spec.seed)
    target = Path(raw_root) / spec.folder_name
    with atomic_directory(target, overwrite=overwrite) as staging:
        splits = {"Tr": spec.num_training, "Ts": spec.num_test}
        for split in splits:
            (staging / f"images{split}").mkdir()
            (staging / f"labels{split}").mkdir()
        for split, count in splits.items():
            for index in range(count):
                case = f"synth_{split.lower()}_{index:03d}"
                image, label = synthesize_case(spec.shape, spec.voxel_spacing, spec.num_channels, rng)
                image_stem = staging / f"images{split}" / case
                label_path = staging / f"labels{split}" / f"{case}{spec.file_ending}"
                if spec.dim == 2:
                    _write_2d(image, label, image_stem, label_path)
                else:
                    _write_3d(image, label, spec.voxel_spacing, image_stem, label_path)
        dataset_json = {
            "name": spec.name,
            "description": "nnunet_ext synthetic dataset (nnunet_ext.data.synthetic)",
            "channel_names": {str(c): ("gray" if c == 0 else f"contrast{c}") for c in range(spec.num_channels)},
            "labels": LABELS,
            "numTraining": spec.num_training,
            "file_ending": spec.file_ending,
        }
        (staging / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return target
