"""Reading and writing the files converters touch: 2-D natural images (PNG/JPEG/BMP/TIFF) and 3-D volumes.

2-D images decode to ``(C, H, W)`` arrays in one of two channel modes:

- ``"gray"``: one channel. Colour-stored images (RGB, palette) are converted with ITU-R 601 luma
  (PIL's ``convert("L")``), which is exact for grayscale stored as RGB (R = G = B).
- ``"rgb"``: three channels R, G, B (palette images are expanded). A grayscale file stays one channel, so
  a gray file among colour files is reported as a mixed channel count rather than silently replicated.

In both modes an alpha channel is dropped only when it is fully opaque; transparency is an error, because
nnU-Net's ``NaturalImage2DIO`` would read it as a fourth channel.

Every file is checked with :mod:`nnunet_ext.data.file_checks` before it is accepted (it decodes completely, its
image values are finite). Every failure raises one of the named :mod:`~nnunet_ext.conversion.errors` with the
file's path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

from nnunet_ext.conversion.errors import ChannelCountError, NonFiniteValueError, UnreadableFileError
from nnunet_ext.data.file_checks import InvalidFileError, check_complete, check_finite, stored_voxels

CHANNEL_MODES = ("gray", "rgb")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a 2-D image by its suffix (case-insensitive: DDTI ships ``.PNG``)."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def check_source_file(path: str | os.PathLike) -> None:
    """:func:`~nnunet_ext.data.file_checks.check_complete`, reported as :class:`UnreadableFileError`."""
    try:
        check_complete(path)
    except InvalidFileError as error:
        raise UnreadableFileError(path, error.detail) from error
    except OSError as error:
        raise UnreadableFileError(path, f"cannot be read ({error.strerror or error})") from error


def check_source_values(array: np.ndarray, path: str | os.PathLike) -> None:
    """:func:`~nnunet_ext.data.file_checks.check_finite`, reported as :class:`NonFiniteValueError`."""
    try:
        check_finite(array, path)
    except InvalidFileError as error:
        raise NonFiniteValueError(path, error.detail) from error


def _open(path: Path) -> Image.Image:
    check_source_file(path)
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableFileError(path, f"cannot decode image ({error})") from error


def _drop_opaque_alpha(image: Image.Image, path: Path) -> Image.Image:
    """RGBA/LA/PA -> RGB/L when the alpha channel is fully opaque; transparency raises."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode not in ("RGBA", "LA", "PA"):
        return image
    alpha = np.asarray(image.getchannel("A"))
    if alpha.min() < 255:
        raise ChannelCountError(path, f"{image.mode} image with transparent pixels (alpha would be a 4th channel)")
    return image.convert("RGB" if image.mode in ("RGBA", "PA") else "L")


def read_image_2d(path: str | os.PathLike, mode: str) -> np.ndarray:
    """Decode a 2-D image into ``(C, H, W)``: C = 1 for ``gray``, 3 for ``rgb`` (1 for a gray file, see above)."""
    if mode not in CHANNEL_MODES:
        raise ValueError(f"channel mode must be one of {CHANNEL_MODES}, got {mode!r}")
    path = Path(path)
    image = _drop_opaque_alpha(_open(path), path)
    if mode == "gray":
        if image.mode not in ("L", "I;16", "I;16B", "I"):
            image = image.convert("L")
    elif image.mode in ("P", "CMYK", "YCbCr"):
        image = image.convert("RGB")
    elif image.mode == "1":
        image = image.convert("L")
    array = np.asarray(image)
    array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    if array.shape[0] not in (1, 3):
        raise ChannelCountError(path, f"decodes to {array.shape[0]} channels (mode {image.mode})")
    check_source_values(array, path)
    return np.ascontiguousarray(array)


def read_mask_2d(path: str | os.PathLike) -> np.ndarray:
    """Decode a mask into ``(H, W)`` (gray values or palette indices) or ``(H, W, 3)`` (colour masks).

    Palette images give their indices (VOC-style class-id masks); an opaque alpha channel is dropped.
    """
    path = Path(path)
    image = _open(path)
    if image.mode == "P" and "transparency" not in image.info:
        return np.asarray(image)
    image = _drop_opaque_alpha(image, path)
    if image.mode in ("1", "CMYK", "YCbCr", "P"):
        image = image.convert("L" if image.mode == "1" else "RGB")
    return np.asarray(image)


def write_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)`` uint8/uint16 losslessly as PNG.

    zlib level 1: about half the encoding time of PIL's default level 6 on photographs, for slightly larger files
    (the encoding dominates a 2-D conversion).
    """
    if array.ndim == 3:
        array = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", compress_level=1)


def read_volume_header(path: str | os.PathLike) -> sitk.ImageFileReader:
    """The header of a volume (size, spacing, components) without reading its voxels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise UnreadableFileError(path, f"cannot read volume header ({_first_line(error)})") from error
    return reader


def read_volume(path: str | os.PathLike) -> sitk.Image:
    """A whole volume as a SimpleITK image, from a complete file only."""
    check_source_file(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise UnreadableFileError(path, f"cannot read volume ({_first_line(error)})") from error


def check_volume_image(path: str | os.PathLike) -> sitk.ImageFileReader:
    """Check an image volume that is copied unchanged: complete, and finite values if stored as floats; returns
    its header."""
    header = read_volume_header(path)
    check_source_file(path)
    if header.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        check_source_values(stored_voxels(path), path)
    return header


def write_volume(array: np.ndarray, path: str | os.PathLike, spacing_zyx: Sequence[float], reference=None) -> None:
    """Write a ``(Z, Y, X)`` array as a compressed volume; geometry from ``reference`` (sitk image) or spacing."""
    image = sitk.GetImageFromArray(array)
    if reference is not None:
        image.CopyInformation(reference)
    else:
        image.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    sitk.WriteImage(image, str(path), useCompression=True)


def copy_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy bytes (nnU-Net's own converters copy NIfTI files unchanged, e.g. Dataset027_ACDC)."""
    shutil.copyfile(source, target)


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
