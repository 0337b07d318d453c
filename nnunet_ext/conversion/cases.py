"""One source case and how it becomes nnU-Net raw files.

A :class:`Case` knows its case id, the split it goes to (``Tr`` -> imagesTr/labelsTr, ``Ts`` ->
imagesTs/labelsTs, ``Ul`` -> imagesUl, the unlabeled pool) and its source files. ``check()`` validates it completely
enough that ``write()`` cannot fail on the source (it raises one of the named
:class:`~nnunet_ext.conversion.errors.SourceProblem` kinds and returns the channel count); ``write()`` writes it
with nnU-Net naming: images ``{case}_{XXXX}{ending}``, labels ``{case}{ending}``.

- :class:`ImageMaskCase`: a 2-D image (+ masks, combined by maximum = OR for binary masks) -> PNG;
- :class:`VolumeCase`: a 3-D image file copied unchanged (+ its label, copied or renumbered);
- :class:`ArrayVolumeCase`: arrays from ``.npz``/``.h5`` files (single volumes or stacks of 2-D slices) -> NIfTI.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_ext.conversion.errors import ChannelCountError, SizeMismatchError, UnreadableFileError
from nnunet_ext.conversion.images import (
    check_source_file,
    check_source_values,
    check_volume_image,
    copy_file,
    read_image_2d,
    read_mask_2d,
    read_volume,
    write_png,
    write_volume,
)
from nnunet_ext.conversion.labels import check_label_values
from nnunet_ext.data.file_checks import DECODE_ERRORS

SPLIT_FOLDERS = {"Tr": ("imagesTr", "labelsTr"), "Ts": ("imagesTs", "labelsTs"), "Ul": ("imagesUl", None)}
MaskDecoder = Callable[[np.ndarray, Path], np.ndarray]


class Case(ABC):
    """One case of the converted dataset (see the module docstring)."""

    case_id: str
    split: str

    @property
    @abstractmethod
    def sources(self) -> list[Path]:
        """The source files this case is made of, image first."""

    @property
    @abstractmethod
    def has_label(self) -> bool:
        """Whether a label file is written."""

    @abstractmethod
    def check(self) -> int:
        """Validate the source; return the number of image channels. Raises a ``SourceProblem``."""

    @abstractmethod
    def write(self, root: Path, file_ending: str) -> None:
        """Write the case below the dataset folder ``root``."""

    def image_file(self, root: Path, file_ending: str, channel: int = 0) -> Path:
        return root / SPLIT_FOLDERS[self.split][0] / f"{self.case_id}_{channel:04d}{file_ending}"

    def label_file(self, root: Path, file_ending: str) -> Path:
        return root / SPLIT_FOLDERS[self.split][1] / f"{self.case_id}{file_ending}"


@dataclass
class ImageMaskCase(Case):
    """A 2-D image and its masks (several masks of one image are combined by maximum, i.e. OR-ed when binary)."""

    case_id: str
    split: str
    image: Path
    masks: Sequence[Path] = ()
    channel_mode: str = "gray"
    decoder: MaskDecoder | None = None

    @property
    def sources(self) -> list[Path]:
        return [self.image, *self.masks]

    @property
    def has_label(self) -> bool:
        return bool(self.masks)

    def _load(self) -> tuple[np.ndarray, np.ndarray | None]:
        image = read_image_2d(self.image, self.channel_mode)
        label = None
        for mask_path in self.masks:
            mask = read_mask_2d(mask_path)
            if mask.shape[:2] != image.shape[1:]:
                raise SizeMismatchError(
                    mask_path,
                    f"mask is {mask.shape[1]}x{mask.shape[0]} px, image {self.image.name} is "
                    f"{image.shape[2]}x{image.shape[1]} px",
                )
            decoded = self.decoder(mask, mask_path)
            label = decoded if label is None else np.maximum(label, decoded)
        return image, label

    def check(self) -> int:
        return self._load()[0].shape[0]

    def write(self, root: Path, file_ending: str) -> None:
        image, label = self._load()
        write_png(image, self.image_file(root, file_ending))
        if label is not None:
            write_png(label, self.label_file(root, file_ending))


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    """nnU-Net's tolerance for matching spacings (``np.allclose`` in ``verify_dataset_integrity``)."""
    return bool(np.allclose(a, b))


@dataclass
class VolumeCase(Case):
    """A 3-D image copied byte for byte, and its label copied (``lut is None``) or renumbered through ``lut``.

    The image is validated from its header (3-D, one component), decompressed completely and, when stored as
    floats, checked for finite values; the label is read whole (complete, same size and spacing as the image,
    values within ``allowed``). nnU-Net's verification re-reads everything at the end.
    """

    case_id: str
    split: str
    image: Path
    label: Path | None = None
    allowed: frozenset[int] = frozenset()
    lut: np.ndarray | None = None

    @property
    def sources(self) -> list[Path]:
        return [self.image] + ([self.label] if self.label is not None else [])

    @property
    def has_label(self) -> bool:
        return self.label is not None

    def check(self) -> int:
        header = check_volume_image(self.image)
        if header.GetDimension() != 3 or header.GetNumberOfComponents() != 1:
            raise ChannelCountError(
                self.image,
                f"expected a 3-D single-component volume, got {header.GetDimension()}-D with "
                f"{header.GetNumberOfComponents()} component(s)",
            )
        if self.label is not None:
            label = read_volume(self.label)
            if label.GetSize() != header.GetSize():
                raise SizeMismatchError(
                    self.label, f"label size {label.GetSize()} != image {self.image.name} size {header.GetSize()}"
                )
            if not _close(label.GetSpacing(), header.GetSpacing()):
                raise SizeMismatchError(
                    self.label,
                    f"label spacing {label.GetSpacing()} != image {self.image.name} spacing {header.GetSpacing()}",
                )
            check_label_values(sitk.GetArrayViewFromImage(label), self.allowed, self.label)
        return 1

    def write(self, root: Path, file_ending: str) -> None:
        copy_file(self.image, self.image_file(root, file_ending))
        if self.label is None:
            return
        if self.lut is None:
            copy_file(self.label, self.label_file(root, file_ending))
            return
        label = read_volume(self.label)
        remapped = self.lut[sitk.GetArrayViewFromImage(label).astype(np.int64)]
        write_volume(remapped, self.label_file(root, file_ending), (), reference=label)


def _load_arrays(path: Path, keys: Sequence[str]) -> list[np.ndarray]:
    """Arrays ``keys`` from an ``.npz`` or ``.h5`` file; a missing key or a damaged file raises UnreadableFileError."""
    check_source_file(path)
    try:
        if path.suffix == ".h5":
            import h5py

            with h5py.File(path, "r") as handle:
                missing = [key for key in keys if key not in handle]
                if not missing:
                    return [np.asarray(handle[key]) for key in keys]
        else:
            with np.load(path) as handle:
                missing = [key for key in keys if key not in handle.files]
                if not missing:
                    return [handle[key] for key in keys]
    except (*DECODE_ERRORS, KeyError) as error:
        raise UnreadableFileError(path, f"cannot read arrays ({error})") from error
    raise UnreadableFileError(path, f"lacks the array key(s) {missing}")


@dataclass
class ArrayVolumeCase(Case):
    """A volume assembled from array files: one file holding ``(Z, Y, X)`` arrays, or 2-D slices stacked in order.

    ``files`` are the slices in slice order (or the one volume file); ``image_key``/``label_key`` name the arrays
    (``label_key=None``: no label). Written as NIfTI with ``spacing_zyx`` (the releases carry no spacing), the
    image as float32 ``image * intensity_scale + intensity_offset``.
    """

    case_id: str
    split: str
    files: Sequence[Path]
    image_key: str
    label_key: str | None
    allowed: frozenset[int] = frozenset()
    spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0)
    slices: bool = False
    intensity_scale: float = 1.0
    intensity_offset: float = 0.0
    _keys: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._keys = [self.image_key] + ([self.label_key] if self.label_key else [])

    @property
    def sources(self) -> list[Path]:
        return list(self.files)

    @property
    def has_label(self) -> bool:
        return self.label_key is not None

    def _load(self) -> tuple[np.ndarray, np.ndarray | None]:
        expected_ndim = 2 if self.slices else 3
        parts: list[list[np.ndarray]] = []
        for path in self.files:
            arrays = _load_arrays(path, self._keys)
            if any(array.ndim != expected_ndim for array in arrays):
                raise UnreadableFileError(
                    path, f"expected {expected_ndim}-D arrays, got shapes {[a.shape for a in arrays]}"
                )
            if len({array.shape for array in arrays}) != 1:
                raise SizeMismatchError(path, f"image and label shapes differ: {[a.shape for a in arrays]}")
            if parts and arrays[0].shape != parts[0][0].shape:
                raise SizeMismatchError(
                    path, f"slice shape {arrays[0].shape} != {parts[0][0].shape} of {self.files[0]}"
                )
            check_source_values(arrays[0], path)
            if self.label_key:
                check_label_values(arrays[1], self.allowed, path)
            parts.append(arrays)
        stacked = [np.stack(column) if self.slices else column[0] for column in zip(*parts)]
        image = stacked[0].astype(np.float32) * self.intensity_scale + self.intensity_offset
        return image, (stacked[1] if self.label_key else None)

    def check(self) -> int:
        self._load()
        return 1

    def write(self, root: Path, file_ending: str) -> None:
        image, label = self._load()
        write_volume(image, self.image_file(root, file_ending), self.spacing_zyx)
        if label is not None:
            write_volume(label.astype(np.uint8), self.label_file(root, file_ending), self.spacing_zyx)
