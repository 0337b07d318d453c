"""Checks every reader of ours runs on a file before accepting it.

SimpleITK reads a truncated ``.nii.gz`` (or ``.nii``) without complaint and fills the missing part with zeros, and
one infinite voxel turns a whole normalised image into NaN. So a file is accepted only when

- it is complete: a ``.gz`` file decompresses to its end (Python's ``gzip``), a NIfTI file holds every voxel its
  header announces, a ``.npz`` file passes ``zipfile``'s CRC check of every member;
- its image values are finite (no NaN, no +-inf).

Both raise :class:`InvalidFileError` (a ``ValueError``) naming the file; callers turn it into their own error kind.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DECODE_ERRORS = (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile)
"""What decoding a damaged compressed file raises (``gzip.BadGzipFile`` is an ``OSError``)."""

_CHUNK = 1 << 22


class InvalidFileError(ValueError):
    """A file that must not be accepted: ``path`` and what is wrong with it (``detail``)."""

    def __init__(self, path: str | os.PathLike, detail: str):
        self.path = str(path)
        self.detail = detail
        super().__init__(f"{self.path}: {detail}")


class IncompleteFileError(InvalidFileError):
    """The file is truncated or its compressed data is damaged."""


class NonFiniteValuesError(InvalidFileError):
    """The image holds NaN or infinite values."""


def _gunzipped_size(path: Path) -> int:
    """Decompress ``path`` to its end; the number of bytes it holds."""
    size = 0
    try:
        with gzip.open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                size += len(chunk)
    except DECODE_ERRORS as error:
        raise IncompleteFileError(path, f"truncated or corrupt compressed data ({error})") from error
    return size


def _nifti_data_end(path: Path) -> int | None:
    """The byte offset at which a NIfTI file's voxel data ends, from its header (None: no NIfTI header)."""
    import nibabel

    try:
        header = nibabel.load(str(path)).header
    except Exception:  # nibabel raises many kinds on a damaged header; the format reader reports it
        return None
    voxels = int(np.prod(header.get_data_shape(), dtype=np.int64))
    # a vox_offset of 0 (some writers, SimpleITK among them) means "right after the header" in a .nii file
    offset = max(int(header.get_data_offset()), header.single_vox_offset)
    return offset + voxels * header.get_data_dtype().itemsize


def check_complete(path: str | os.PathLike) -> None:
    """Raise :class:`IncompleteFileError` unless ``path`` decodes completely (see the module docstring)."""
    path = Path(path)
    name = path.name.lower()
    size = _gunzipped_size(path) if name.endswith(".gz") else path.stat().st_size
    if name.endswith((".nii", ".nii.gz")):
        end = _nifti_data_end(path)
        if end is not None and size < end:
            raise IncompleteFileError(path, f"truncated: {size} bytes where the header announces {end}")
    elif name.endswith(".npz"):
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
        except DECODE_ERRORS as error:
            raise IncompleteFileError(path, f"truncated or corrupt archive ({error})") from error
        if damaged is not None:
            raise IncompleteFileError(path, f"corrupt archive member {damaged}")


def check_finite(array: np.ndarray, path: str | os.PathLike) -> None:
    """Raise :class:`NonFiniteValuesError` with the count of NaN/infinite values (integer arrays always pass)."""
    if not np.issubdtype(array.dtype, np.inexact):
        return
    bad = array.size - int(np.count_nonzero(np.isfinite(array)))
    if bad:
        raise NonFiniteValuesError(path, f"{bad} voxel(s) are NaN or infinite")


def stored_voxels(path: str | os.PathLike) -> np.ndarray:
    """The voxels of a volume as stored in the file: through nibabel for NIfTI (SimpleITK reads NaN and infinite
    NIfTI voxels as 0, nibabel-based readers keep them), SimpleITK otherwise."""
    if Path(path).name.lower().endswith((".nii", ".nii.gz")):
        import nibabel

        return np.asarray(nibabel.load(str(path)).dataobj)
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def read_complete_images(reader, files: Sequence[str]) -> tuple[np.ndarray, dict]:
    """``reader.read_images(files)`` (an nnU-Net reader/writer, its prints silenced) after :func:`check_complete` of
    every file; callers check the values with :func:`check_finite`.

    Raises:
        IncompleteFileError: a file is truncated or corrupt. Errors of the reader itself propagate.
    """
    for file in files:
        check_complete(file)
    with contextlib.redirect_stdout(io.StringIO()):
        return reader.read_images(tuple(files))
