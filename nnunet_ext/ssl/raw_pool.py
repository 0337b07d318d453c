"""Validation of the raw unlabeled pool folders (``imagesUl/``, ``imagesSynth/``), as nnU-Net validates ``imagesTr/``.

Two stages, each raising :class:`PoolValidationError` with every problem found, each naming its file:

1. :func:`find_pool_cases` -- the folder listing: nnU-Net image naming ``{case}_{XXXX}{file_ending}``, the dataset's
   file ending, complete channel files per case. No file is opened.
2. :func:`read_pool_case` -- one case: complete files (a truncated ``.nii.gz`` is not read as zeros, see
   :mod:`nnunet_ext.data.file_checks`), readable by the dataset's reader, all channel files of one geometry (shape
   and spacing), the dataset's channel count, 2D/3D like the training images, finite positive spacing, no NaN or
   infinite voxel.

Hidden files (``.DS_Store``) and metadata side files (``*.json``, ``*.txt``, ``*.md``, ``*.csv``, e.g. a provenance
record of synthetic images) are ignored; anything else that is not an image of the dataset is an error.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nnunetv2.imageio.base_reader_writer import BaseReaderWriter

from nnunet_ext.data.file_checks import InvalidFileError, check_finite, read_complete_images

IGNORED_SUFFIXES = (".json", ".txt", ".md", ".csv")
_IMAGE_STEM = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})")


class PoolValidationError(ValueError):
    """Problems found in an unlabeled pool; ``problems`` lists them, each naming its file."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class PoolCase:
    """One raw pool case: its name and its channel files in channel order."""

    name: str
    files: tuple[str, ...]


def find_pool_cases(folder: str | Path, file_ending: str, files_per_case: int) -> list[PoolCase]:
    """The cases of a raw pool folder, sorted by name.

    Args:
        folder: ``imagesUl/`` or ``imagesSynth/`` of a raw dataset.
        file_ending: the dataset's ``file_ending`` (dataset.json).
        files_per_case: channel files per case, as in ``imagesTr/`` (one per channel, or one RGB file).

    Raises:
        PoolValidationError: a file is misnamed, has another file ending, has a channel index beyond
            ``files_per_case``, or a case lacks a channel file.
        FileNotFoundError: ``folder`` does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"unlabeled pool folder {folder} does not exist")
    problems = []
    channel_files: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or (path.is_file() and path.name.lower().endswith(IGNORED_SUFFIXES)):
            continue
        if not path.is_file():
            problems.append(f"{path}: not a file (a pool folder holds image files only)")
            continue
        if not path.name.endswith(file_ending):
            problems.append(f"{path}: file ending is not the dataset's {file_ending!r}")
            continue
        match = _IMAGE_STEM.fullmatch(path.name[: -len(file_ending)])
        if match is None:
            problems.append(f"{path}: not named {{case}}_{{XXXX}}{file_ending} (XXXX: 4-digit channel index)")
            continue
        channel = int(match["channel"])
        if channel >= files_per_case:
            problems.append(
                f"{path}: channel index {channel:04d}, but the dataset's cases have {files_per_case} channel "
                f"file(s) (0000..{files_per_case - 1:04d})"
            )
            continue
        channel_files.setdefault(match["case"], {})[channel] = path
    for case, files in channel_files.items():
        missing = [f"{case}_{c:04d}{file_ending}" for c in range(files_per_case) if c not in files]
        if missing:
            problems.append(f"{folder / case}: missing channel file(s) {', '.join(missing)}")
    if problems:
        raise PoolValidationError(problems)
    return [
        PoolCase(case, tuple(str(files[c]) for c in range(files_per_case)))
        for case, files in sorted(channel_files.items())
    ]


def read_pool_case(
    case: PoolCase, reader_class: type[BaseReaderWriter], num_channels: int, training_is_2d: bool | None
) -> tuple[np.ndarray, dict]:
    """Read ``case`` with the dataset's reader and check it; returns nnU-Net's ``(data (C, Z, Y, X), properties)``.

    Args:
        num_channels: channels of the dataset (``channel_names`` of dataset.json).
        training_is_2d: whether the training images are 2D (one slice); None skips that check.

    Raises:
        PoolValidationError: naming the file(s) and the problem.
    """
    reader = reader_class()
    try:
        data, properties = read_complete_images(reader, case.files)
    except InvalidFileError as error:
        raise PoolValidationError([str(error)]) from error
    except Exception as error:
        raise PoolValidationError(_diagnose_unreadable(case, reader, error)) from error
    problems = []
    files = ", ".join(case.files)
    if data.shape[0] != num_channels:
        problems.append(f"{files}: {data.shape[0]} channel(s) read, the dataset has {num_channels}")
    if training_is_2d is not None and (data.shape[1] == 1) != training_is_2d:
        kind = "2D" if training_is_2d else "3D"
        problems.append(f"{files}: image of shape {tuple(data.shape[1:])} in a {kind} dataset")
    spacing = [float(s) for s in properties["spacing"]]
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        problems.append(f"{files}: spacing {spacing} is not positive and finite")
    try:
        check_finite(data, files)
    except InvalidFileError as error:
        problems.append(str(error))
    if problems:
        raise PoolValidationError(problems)
    return data, properties


def _diagnose_unreadable(case: PoolCase, reader: BaseReaderWriter, error: Exception) -> list[str]:
    """Which channel file of ``case`` cannot be read, or how the geometry of its channel files differs."""
    problems, geometry = [], {}
    for file in case.files:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                data, properties = reader.read_images((file,))
        except Exception as file_error:
            problems.append(f"{file}: cannot be read by {type(reader).__name__}: {file_error!r}")
            continue
        geometry[file] = (tuple(data.shape[1:]), tuple(round(float(s), 6) for s in properties["spacing"]))
    if not problems and len(set(geometry.values())) > 1:
        reference_file, reference = next(iter(geometry.items()))
        for file, (shape, spacing) in geometry.items():
            if (shape, spacing) != reference:
                problems.append(
                    f"{file}: shape {shape} / spacing {spacing} differ from {reference_file}: shape {reference[0]} "
                    f"/ spacing {reference[1]}"
                )
    return problems or [f"{', '.join(case.files)}: cannot be read by {type(reader).__name__}: {error!r}"]
