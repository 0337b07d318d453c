"""Synthetic images in the dataset's own format, the provenance record and the preview grid.

Images go to ``$nnUNet_raw/DatasetXXX_Name/imagesSynth/`` with nnU-Net's image naming ``{case}_{XXXX}{file_ending}``
and the training images' files per case (an RGB PNG stays one 3-channel file), dtype and intensity range. Case names
are ``synth_f{fold}_s{seed}_{index:05d}``. PNG and other natural-image datasets get 2D images; NIfTI (and other
SimpleITK formats) get files of the training files' dimension: single-slice volumes for 3D datasets, with the
median training spacing and the origin and direction of a training image (see ``images.OutputGeometry``).

Each batch is written into a hidden staging folder beside ``imagesSynth/`` and only complete files are moved into
place, so a pool preprocessing never picks up a half-written image.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from PIL import Image
from skimage import io as skimage_io

from nnunet_ext.data.atomic import atomic_file, atomic_write_text
from nnunet_ext.synthesis.images import TrainingImages, to_reader_order

PREVIEW_COLUMNS = 8


def run_name(fold_tag: str, seed: int) -> str:
    return f"synth_f{fold_tag}_s{seed}"


def case_name(fold_tag: str, seed: int, index: int) -> str:
    return f"{run_name(fold_tag, seed)}_{index:05d}"


class SyntheticImageWriter:
    """Writes synthetic cases into ``folder`` like the training images described by ``training``."""

    def __init__(self, folder: Path, training: TrainingImages, file_ending: str, natural: bool):
        self.folder = folder
        self.training = training
        self.file_ending = file_ending
        self.natural = natural

    def files(self, case: str) -> list[Path]:
        return [self.folder / f"{case}_{c:04d}{self.file_ending}" for c in range(len(self.training.layout.dtypes))]

    def is_complete(self, case: str) -> bool:
        return all(path.is_file() for path in self.files(case))

    def existing_cases(self, cases: Sequence[str]) -> list[str]:
        return [case for case in cases if any(path.exists() for path in self.files(case))]

    def _cast(self, data: np.ndarray, dtype: np.dtype) -> np.ndarray:
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            return np.clip(np.round(data), info.min, info.max).astype(dtype)
        return data.astype(dtype)

    def _write_file(self, data: np.ndarray, dtype: np.dtype, path: Path) -> None:
        """``data`` ``(k, *spatial)`` reader-order channels of one file."""
        data = self._cast(data, dtype)
        if self.natural:
            image = data[:, 0]
            image = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
            skimage_io.imsave(path, image, check_contrast=False)
            return
        geometry = self.training.geometry
        volume = data[0] if geometry.file_dimension == 3 else data[0, 0]
        spacing = geometry.spacing if geometry.file_dimension == 3 else geometry.spacing[1:]
        itk = sitk.GetImageFromArray(volume)
        itk.SetSpacing(tuple(float(s) for s in reversed(spacing)))
        itk.SetOrigin(geometry.origin)
        itk.SetDirection(geometry.direction)
        sitk.WriteImage(itk, str(path), useCompression=True)

    def write(self, cases: Sequence[str], images: torch.Tensor) -> list[list[str]]:
        """Write ``images`` ``(B, C, R, R)`` in [-1, 1] as ``cases``; returns each case's file names."""
        arrays = to_reader_order(images, self.training)
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", suffix=".partial", dir=self.folder.parent))
        written = []
        try:
            for case, array in zip(cases, arrays):
                channel = 0
                for path, count, dtype in zip(
                    self.files(case), self.training.layout.channels_per_file, self.training.layout.dtypes
                ):
                    self._write_file(array[channel : channel + count], np.dtype(dtype), staging / path.name)
                    channel += count
            for case in cases:
                for path in self.files(case):
                    os.replace(staging / path.name, path)
                written.append([path.name for path in self.files(case)])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return written


def write_provenance(path: Path, record: dict) -> None:
    atomic_write_text(path, json.dumps(record, indent=2))


def _tiles(images: torch.Tensor) -> np.ndarray:
    """``(N, C, R, R)`` in [-1, 1] -> uint8 ``(N, R, R, 3)``: RGB for 3 channels, else channel 0 as gray."""
    shown = images[:, :3] if images.shape[1] == 3 else images[:, :1].expand(-1, 3, -1, -1)
    return ((shown.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def write_preview(path: Path, real: torch.Tensor, synthetic: torch.Tensor) -> None:
    """A PNG grid: the first row(s) real training images, the following row(s) synthetic images (model resolution).

    Up to ``PREVIEW_COLUMNS`` images of each; rows are separated by a 2-pixel white line, the two groups by 6.
    """
    resolution = real.shape[-1]
    groups = [_tiles(real[:PREVIEW_COLUMNS]), _tiles(synthetic[:PREVIEW_COLUMNS])]
    width = PREVIEW_COLUMNS * (resolution + 2) - 2
    rows = []
    for group_index, group in enumerate(groups):
        row = np.full((resolution, width, 3), 255, dtype=np.uint8)
        for column, tile in enumerate(group):
            start = column * (resolution + 2)
            row[:, start : start + resolution] = tile
        rows.append(row)
        if group_index == 0:
            rows.append(np.full((6, width, 3), 255, dtype=np.uint8))
    with atomic_file(path) as temporary:
        Image.fromarray(np.concatenate(rows)).save(temporary, format="PNG")
