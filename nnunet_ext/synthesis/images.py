"""The fold's raw training images as model-resolution tensors in [-1, 1], and the way back to the dataset's format.

Each case is read with the dataset's reader (array ``(C, Z, Y, X)`` in the reader's axis order), transposed by the
plans' ``transpose_forward`` and cut into 2D slices along the first axis, as nnU-Net's 2d configuration does (a 2D
image is one slice). Every slice is resized (bilinear, antialiased) to the model's square ``resolution``: images of
other sizes or aspect ratios are stretched, and synthetic images are resized back to the median training-image size
(per axis of the slice plane).

Intensities are mapped linearly per channel from ``[low, high]`` to [-1, 1] (Medfusion's ``Normalize(0.5, 0.5)`` of
[0, 1] images). ``[low, high]`` is the exact range of the training images for natural-image formats (PNG, ...) and
the 0.5/99.5 percentiles (as nnU-Net's CT normalisation) for medical formats, whose tails hold rare outliers.
Synthetic images are mapped back, clipped to ``[low, high]`` and stored in the dtype of the training files.

Memory: all slices are held as float32 at model resolution, ``4 * C * resolution**2`` bytes per slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
from skimage import io as skimage_io
from tqdm import tqdm

from nnunet_ext.data.file_checks import InvalidFileError, check_finite, read_complete_images
from nnunet_ext.synthesis.source import SynthesisInputError, SynthesisSource

#: fewest training images (2D slices) and cases a run accepts; the memorisation check needs two cases
MIN_TRAINING_IMAGES = 4
MIN_TRAINING_CASES = 2
#: samples per case and channel for the percentile estimate of medical-format intensity ranges
PERCENTILE_SAMPLES = 100_000


@dataclass(frozen=True)
class FileLayout:
    """How a case's channels are stored: channels per file (RGB PNG: 3) and each file's dtype (``numpy`` name)."""

    channels_per_file: tuple[int, ...]
    dtypes: tuple[str, ...]

    @property
    def num_channels(self) -> int:
        return sum(self.channels_per_file)


@dataclass(frozen=True)
class IntensityRange:
    """Per-channel ``[low, high]`` mapped to [-1, 1]."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def _bounds(self, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1) + (1,) * (reference.ndim - 2)
        low = torch.tensor(self.low, dtype=reference.dtype, device=reference.device).reshape(shape)
        high = torch.tensor(self.high, dtype=reference.dtype, device=reference.device).reshape(shape)
        return low, high

    def to_model(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, ...)`` dataset intensities -> [-1, 1] (values outside ``[low, high]`` are clipped)."""
        low, high = self._bounds(images)
        return (2 * (images - low) / (high - low).clamp_min(1e-8) - 1).clamp(-1, 1)

    def from_model(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, ...)`` in [-1, 1] -> dataset intensities within ``[low, high]``."""
        low, high = self._bounds(images)
        return low + (images.clamp(-1, 1) + 1) / 2 * (high - low)


@dataclass(frozen=True)
class OutputGeometry:
    """Shape and geometry of written images.

    ``shape``: the 2D size in the slice plane (median of the training images, transposed order);
    ``spacing``: median spacing per axis in the reader's order (for single-slice volumes: the slice axis keeps the
    training images' slice spacing); ``origin``/``direction``: those of a reference training file (SimpleITK
    order), so any reader orients synthetic images like the training images; ``file_dimension``: 2 or 3.
    """

    shape: tuple[int, int]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    file_dimension: int


@dataclass
class TrainingImages:
    """The fold's training images at model resolution and what is needed to write synthetic ones alike.

    ``images``: ``(N, C, R, R)`` float32 in [-1, 1]; ``case_ids[i]``: the case that image ``i`` comes from.
    """

    images: torch.Tensor
    case_ids: list[str]
    intensity: IntensityRange
    layout: FileLayout
    geometry: OutputGeometry
    transpose_forward: tuple[int, ...]

    @property
    def num_channels(self) -> int:
        return self.images.shape[1]


def read_case(source: SynthesisSource, files: tuple[str, ...]) -> tuple[np.ndarray, dict]:
    """One case through the dataset's reader (its diagnostic prints silenced), from complete files with finite
    values only.

    Raises:
        SynthesisInputError: a file is truncated or corrupt, or holds NaN or infinite values.
    """
    try:
        data, properties = read_complete_images(source.reader_class(), files)
        check_finite(data, ", ".join(files))
    except InvalidFileError as error:
        raise SynthesisInputError(str(error)) from error
    return data, properties


def file_layout(source: SynthesisSource, files: tuple[str, ...]) -> FileLayout:
    """Channels and dtype of each file of a case."""
    channels, dtypes = [], []
    for file in files:
        data, _ = read_case(source, (file,))
        channels.append(data.shape[0])
        if source.reader_class is NaturalImage2DIO:
            dtypes.append(skimage_io.imread(file).dtype.name)
        else:
            dtypes.append(sitk.GetArrayViewFromImage(sitk.ReadImage(file)).dtype.name)
    return FileLayout(tuple(channels), tuple(dtypes))


def resize(images: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, C, *shape)``, bilinear with antialiasing (area-like when shrinking)."""
    if tuple(images.shape[-2:]) == tuple(shape):
        return images
    return F.interpolate(images, size=shape, mode="bilinear", align_corners=False, antialias=True)


def _slices(data: np.ndarray, transpose_forward: tuple[int, ...]) -> torch.Tensor:
    """``(C, *spatial)`` in reader order -> ``(S, C, H, W)`` slices along the 2d configuration's axis."""
    transposed = data.transpose((0, *[axis + 1 for axis in transpose_forward]))
    return torch.from_numpy(np.ascontiguousarray(transposed, dtype=np.float32)).transpose(0, 1)


def _intensity_range(natural: bool, minima, maxima, samples) -> IntensityRange:
    if natural:
        return IntensityRange(tuple(np.min(minima, axis=0).tolist()), tuple(np.max(maxima, axis=0).tolist()))
    pooled = np.concatenate(samples, axis=1)
    return IntensityRange(
        tuple(np.percentile(pooled, 0.5, axis=1).tolist()), tuple(np.percentile(pooled, 99.5, axis=1).tolist())
    )


def _reference_geometry(source: SynthesisSource, files: tuple[str, ...]) -> tuple[tuple, tuple, int]:
    if source.reader_class is NaturalImage2DIO:
        return (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), 2
    information = sitk.ImageFileReader()
    information.SetFileName(files[0])
    information.ReadImageInformation()
    if information.GetDimension() not in (2, 3):
        raise SynthesisInputError(f"{files[0]}: {information.GetDimension()}D files are not supported")
    return information.GetOrigin(), information.GetDirection(), information.GetDimension()


def load_training_images(source: SynthesisSource, resolution: int) -> TrainingImages:
    """Read, slice, resize and normalise the fold's training images.

    Raises:
        SynthesisInputError: mixed channel counts or file layouts between cases, too few images, incomplete files,
            NaN or infinite values.
    """
    rng = np.random.default_rng(0)
    natural = source.reader_class is NaturalImage2DIO
    first_case, first_files = next(iter(source.cases.items()))
    layout = file_layout(source, first_files)
    slices, case_ids, shapes, spacings, minima, maxima, samples = [], [], [], [], [], [], []
    for case, files in tqdm(source.cases.items(), desc="reading training images", unit="case"):
        if len(files) != len(layout.channels_per_file):
            raise SynthesisInputError(
                f"mixed channel files: case {case} has {len(files)} file(s), case {first_case} has "
                f"{len(layout.channels_per_file)}"
            )
        data, properties = read_case(source, files)
        if data.shape[0] != layout.num_channels:
            raise SynthesisInputError(
                f"mixed channel counts: case {case} ({', '.join(files)}) has {data.shape[0]} channel(s), case "
                f"{first_case} has {layout.num_channels}"
            )
        flat = data.reshape(data.shape[0], -1)
        minima.append(flat.min(axis=1))
        maxima.append(flat.max(axis=1))
        samples.append(flat[:, rng.integers(0, flat.shape[1], size=min(PERCENTILE_SAMPLES, flat.shape[1]))])
        case_slices = _slices(data, source.transpose_forward)
        shapes.append(case_slices.shape[-2:])
        spacings.append([float(s) for s in properties["spacing"]])
        slices.append(resize(case_slices, (resolution, resolution)))
        case_ids += [case] * len(case_slices)
    if len(case_ids) < MIN_TRAINING_IMAGES or len(source.cases) < MIN_TRAINING_CASES:
        raise SynthesisInputError(
            f"too few training images: fold {source.fold_tag} of {source.dataset_name} has {len(case_ids)} image(s) "
            f"in {len(source.cases)} case(s); at least {MIN_TRAINING_IMAGES} images from {MIN_TRAINING_CASES} "
            "cases are needed"
        )
    intensity = _intensity_range(natural, minima, maxima, samples)
    origin, direction, file_dimension = _reference_geometry(source, first_files)
    geometry = OutputGeometry(
        shape=tuple(round(float(v)) for v in np.median(np.array(shapes), axis=0)),
        spacing=tuple(float(v) for v in np.median(np.array(spacings), axis=0)),
        origin=tuple(origin),
        direction=tuple(direction),
        file_dimension=file_dimension,
    )
    images = intensity.to_model(torch.cat(slices))
    return TrainingImages(images, case_ids, intensity, layout, geometry, source.transpose_forward)


def to_reader_order(images: torch.Tensor, training: TrainingImages) -> np.ndarray:
    """Synthetic ``(N, C, R, R)`` in [-1, 1] -> ``(N, C, *spatial)`` dataset intensities in the reader's axis order.

    Resized to the median training-image size; one slice along the 2d configuration's axis.
    """
    resized = training.intensity.from_model(resize(images, training.geometry.shape))
    volumes = resized.unsqueeze(2).cpu().numpy()
    backward = np.argsort(training.transpose_forward)
    return volumes.transpose((0, 1, *[axis + 2 for axis in backward]))
