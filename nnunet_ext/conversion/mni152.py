"""ICBM152 2009a symmetric template (nilearn's copy) -> ``Dataset084_MNI152Tissue``: 2-D axial tissue slices.

Nothing is downloaded. Source: the three files of nilearn's ``nilearn/datasets/data/`` (1 mm, 197 x 233 x 189
voxels), read from the installed nilearn (pip install "nnunet_ext[mni152]") unless --input names a folder holding a
copy of them (nilearn's description calls its template asymmetrical, but these files are the ``sym_09a`` release
and are voxel for voxel left-right symmetric)::

    mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz   skull-stripped T1 (uint8)
    mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz   grey-matter probability x 255 (uint8)
    mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz   white-matter probability x 255 (uint8)

Resolution: every volume is smoothed with a Gaussian of sigma (s - source spacing) / 2 mm per axis (anti-aliasing,
scikit-image's rule for downsampling) and resampled linearly onto an isotropic grid of --spacing s mm centred on the
template's (so it stays left-right symmetric): 99 x 117 x 95 voxels at the default 2 mm.

Labels: with p_gm, p_wm the resampled probabilities (stored value / 255) and p_bg = clip(1 - p_gm - p_wm, 0, 1),
every pixel gets argmax(p_bg, p_gm, p_wm) = 0 background, 1 grey_matter, 2 white_matter (a tie goes to the lower
label). CSF counts as background.

Cases: axial slices only; each is one 2-D case, a NIfTI of X x Y x 1 voxels that keeps its place in the template
(its origin holds the slice's height z in mm). Slices of which less than --min-brain of the pixels are grey or
white matter are left out. The test set (imagesTs/labelsTs) is one contiguous slab of --test-fraction of the
remaining slices from the middle of the brain; on either side of it the next ceil(gap / spacing) slices belong to
neither set; the slices below and above are the training set (imagesTr/labelsTr). ``slices.csv`` lists every axial slice
with its height, role and tissue fractions. Test and training images are spatially separated:

- adjacency: at least --gap mm of left-out slices lie between a test slice and a training slice (their centres are
  at least gap + spacing apart). At 2 mm each resampled slice draws on the source slices within 2 mm of its centre
  (the smoothing kernel's reach; the grid's points fall on source voxels), so with the default 6 mm gap (centres
  >= 8 mm apart) no source voxel feeds both a test and a training slice;
- orientation: all cases are axial, so no training slice crosses the test slab;
- mirror images: the template is symmetric about the mid-sagittal plane, so the mirror image of an axial slice is
  that same slice at the same height (sagittal slices at x and -x would be mirror pairs), never a slice of the
  other set.

nnU-Net's own 5-fold split draws validation slices among neighbouring training slices, so validation Dice is
optimistic; the spatially separated imagesTs/labelsTs are the measure.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_ext.conversion.cases import Case
from nnunet_ext.conversion.cli import argument_type, converter_parser, run
from nnunet_ext.conversion.errors import (
    ChannelCountError,
    InvalidSourceError,
    MissingPartnerError,
    SizeMismatchError,
    SourceLayoutError,
    SourceProblem,
    UnexpectedLabelError,
)
from nnunet_ext.conversion.images import check_source_values, read_volume
from nnunet_ext.conversion.writer import DatasetDescription, convert_dataset
from nnunet_ext.data.file_checks import stored_voxels

DATASET_ID, NAME = 84, "MNI152Tissue"
EXTRA = "mni152"
INSTALL_HINT = f'pip install "nnunet_ext[{EXTRA}]"'
SOURCE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "grey_matter": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "white_matter": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
LABELS = {"background": 0, "grey_matter": 1, "white_matter": 2}
SLICES_FILE = "slices.csv"
ROLES = {"train": "Tr", "test": "Ts"}
DEFAULT_SPACING, DEFAULT_GAP, DEFAULT_TEST_FRACTION, DEFAULT_MIN_BRAIN = 2.0, 6.0, 0.2, 0.01
METADATA = {
    "reference": "Fonov et al., NeuroImage 54(1), 2011, doi:10.1016/j.neuroimage.2010.07.033 (ICBM 2009a "
    "nonlinear symmetric template, MNI / McConnell Brain Imaging Centre), as shipped by nilearn",
    "license": "the ICBM 2009 release's notice (http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009); "
    "nilearn's dataset description lists it as unknown",
}
_FLOAT_PIXELS = (sitk.sitkFloat32, sitk.sitkFloat64)


def nilearn_data_folder() -> Path:
    """``nilearn/datasets/data`` of the installed nilearn, found without importing nilearn.

    Raises:
        SourceLayoutError: nilearn is not installed (the message names the extra that installs it).
    """
    spec = find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise SourceLayoutError(
            f"no --input given and nilearn is not installed: {INSTALL_HINT} installs it (the template ships in its "
            f"wheel), or pass -i with a folder holding {', '.join(SOURCE_FILES.values())}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def _read_source(path: Path, probability: bool) -> sitk.Image:
    """One source volume as float32, complete and finite; a probability map scaled to [0, 1] (uint8 / 255, floats
    as stored). Raises a ``SourceProblem`` naming ``path``."""
    if not path.is_file():
        raise MissingPartnerError(path, "not found: the template needs the T1 image and both probability maps")
    image = read_volume(path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ChannelCountError(
            path,
            f"expected a 3-D single-component volume, got {image.GetDimension()}-D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s)",
        )
    pixel = image.GetPixelID()
    if pixel in _FLOAT_PIXELS:
        check_source_values(stored_voxels(path), path)
    elif probability and pixel != sitk.sitkUInt8:
        raise UnexpectedLabelError(
            path, f"a probability map is stored as uint8 (x 255) or floats, not {image.GetPixelIDTypeAsString()}"
        )
    image = sitk.Cast(image, sitk.sitkFloat32)
    if probability and pixel == sitk.sitkUInt8:
        image = image / 255.0
    if probability:
        values = sitk.GetArrayViewFromImage(image)
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:
            raise UnexpectedLabelError(path, f"probabilities outside [0, 1] (from {low:g} to {high:g})")
    return image


def _axial_problem(path: Path, image: sitk.Image) -> SourceProblem | None:
    """A problem unless the volume's third axis runs inferior-superior (its slices are then axial)."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if abs(abs(direction[2, 2]) - 1) > 1e-3:
        return SourceProblem(
            path, f"its third axis (direction {direction[:, 2].round(3).tolist()}) is not inferior-superior"
        )
    return None


def _geometry_problem(
    path: Path, image: sitk.Image, reference: sitk.Image, reference_path: Path
) -> SourceProblem | None:
    """A size mismatch unless ``image`` lies on ``reference``'s voxel grid."""
    for what in ("Size", "Spacing", "Origin", "Direction"):
        mine, theirs = getattr(image, f"Get{what}")(), getattr(reference, f"Get{what}")()
        if not np.allclose(mine, theirs, atol=1e-4):
            return SizeMismatchError(path, f"{what.lower()} {mine} != {theirs} of {reference_path.name}")
    return None


def read_template(folder: Path) -> dict[str, sitk.Image]:
    """The T1 image and the grey/white-matter probability maps of ``folder`` (keys of :data:`SOURCE_FILES`), float32
    on one voxel grid whose third axis is axial.

    Raises:
        InvalidSourceError: every problem found (missing, truncated or corrupt file, NaN/inf, probabilities outside
            [0, 1], grids that differ, a third axis that is not inferior-superior).
    """
    volumes: dict[str, sitk.Image] = {}
    problems: list[SourceProblem] = []
    for key, file_name in SOURCE_FILES.items():
        try:
            volumes[key] = _read_source(folder / file_name, probability=key != "t1")
        except SourceProblem as problem:
            problems.append(problem)
    if "t1" in volumes:
        t1_path = folder / SOURCE_FILES["t1"]
        problems.append(_axial_problem(t1_path, volumes["t1"]))
        problems += [
            _geometry_problem(folder / SOURCE_FILES[key], volumes[key], volumes["t1"], t1_path)
            for key in volumes
            if key != "t1"
        ]
    problems = [problem for problem in problems if problem is not None]
    if problems:
        raise InvalidSourceError(problems)
    return volumes


def resample(image: sitk.Image, spacing: float) -> sitk.Image:
    """``image`` smoothed (sigma (spacing - source spacing) / 2 mm per axis, none where that is <= 0) and resampled
    linearly onto the isotropic grid of ``spacing`` mm that is centred on ``image``'s and covers its extent:
    ``floor((n - 1) * source spacing / spacing) + 1`` voxels per axis. An image already on that grid is returned
    unchanged."""
    old_spacing = np.asarray(image.GetSpacing())
    old_size = np.asarray(image.GetSize())
    size = np.floor((old_size - 1) * old_spacing / spacing + 1e-6).astype(int) + 1
    if np.allclose(old_spacing, spacing) and np.array_equal(size, old_size):
        return image
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    centre = np.asarray(image.GetOrigin()) + direction @ (old_spacing * (old_size - 1) / 2)
    origin = centre - direction @ (np.full(3, spacing) * (size - 1) / 2)
    variance = [max(0.0, (spacing - s) / 2) ** 2 for s in old_spacing]
    if any(variance):
        image = sitk.DiscreteGaussian(image, variance, 32, 0.01, True)
    return sitk.Resample(
        image,
        [int(n) for n in size],
        sitk.Transform(),
        sitk.sitkLinear,
        origin.tolist(),
        [float(spacing)] * 3,
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


def tissue_labels(grey: np.ndarray, white: np.ndarray) -> np.ndarray:
    """uint8 labels of the module docstring's rule: argmax(clip(1 - grey - white, 0, 1), grey, white), ties to the
    lower label; any shape."""
    background = np.clip(1.0 - grey - white, 0.0, 1.0)
    return np.argmax(np.stack([background, grey, white]), axis=0).astype(np.uint8)


def assign_slices(
    brain_fraction: Sequence[float], spacing: float, gap: float, test_fraction: float, min_brain: float
) -> list[str]:
    """The role of every axial slice (``brain_fraction[k]``: share of slice k's pixels that are grey or white matter):
    ``excluded`` (below ``min_brain``), ``test`` (the middle ``round(test_fraction * kept)`` kept slices, at least
    one), ``gap`` (kept slices within ``ceil(gap / spacing)`` slices of the test slab) or ``train``.

    Raises:
        SourceLayoutError: no slice is kept, or no training slice is left.
    """
    kept = [k for k, fraction in enumerate(brain_fraction) if fraction >= min_brain]
    if not kept:
        raise SourceLayoutError(f"no axial slice has at least {min_brain:g} of its pixels in grey or white matter")
    count = max(1, round(test_fraction * len(kept)))
    start = (len(kept) - count) // 2
    test = kept[start : start + count]
    margin = math.ceil(gap / spacing - 1e-9)
    roles = ["excluded"] * len(brain_fraction)
    for k in kept:
        inside = test[0] <= k <= test[-1]
        roles[k] = "test" if inside else "gap" if test[0] - margin <= k <= test[-1] + margin else "train"
    if "train" not in roles:
        raise SourceLayoutError(
            f"{len(kept)} brain slices leave no training slice beside {count} test slice(s) and a gap of {margin} "
            "slice(s) on each side (lower --test-fraction or --gap, or a smaller --spacing)"
        )
    return roles


@dataclass
class TemplateSliceCase(Case):
    """One axial slice: ``image`` (float32) and ``label`` (uint8), SimpleITK images of X x Y x 1 voxels that keep the
    template's geometry. The template was validated as a whole (:func:`read_template`) before it was sliced."""

    case_id: str
    split: str
    image: sitk.Image
    label: sitk.Image
    source_files: tuple[Path, ...]

    @property
    def sources(self) -> list[Path]:
        return list(self.source_files)

    @property
    def has_label(self) -> bool:
        return True

    def check(self) -> int:
        return 1

    def write(self, root: Path, file_ending: str) -> None:
        sitk.WriteImage(self.image, str(self.image_file(root, file_ending)), useCompression=True)
        sitk.WriteImage(self.label, str(self.label_file(root, file_ending)), useCompression=True)


def _slices_table(case_ids: list[str], roles: list[str], heights: list[float], labels: np.ndarray) -> str:
    """``slices.csv``: every axial slice with case id (train/test only), height z in mm, role, tissue fractions."""
    output = io.StringIO()
    writer = csv.writer(output, lineterminator="\n")
    writer.writerow(["slice", "case_id", "z_mm", "role", "grey_matter", "white_matter"])
    for k, (case_id, role, z) in enumerate(zip(case_ids, roles, heights)):
        fractions = [float(np.mean(labels[k] == label)) for label in (1, 2)]
        writer.writerow([k, case_id, f"{z:g}", role, *(f"{f:.4f}" for f in fractions)])
    return output.getvalue()


def _check_options(spacing: float, gap: float, test_fraction: float, min_brain: float) -> None:
    if not spacing > 0 or not gap >= 0 or not 0 < test_fraction < 1 or not 0 <= min_brain < 1:
        raise ValueError(
            f"need spacing > 0, gap >= 0, 0 < test_fraction < 1, 0 <= min_brain < 1; got spacing={spacing}, "
            f"gap={gap}, test_fraction={test_fraction}, min_brain={min_brain}"
        )


def convert_mni152(
    source: Path | None,
    output_root: Path,
    dataset_id: int = DATASET_ID,
    name: str = NAME,
    spacing: float = DEFAULT_SPACING,
    gap: float = DEFAULT_GAP,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    min_brain: float = DEFAULT_MIN_BRAIN,
    **options,
) -> Path:
    """Convert the template in ``source`` (None: the installed nilearn's copy) into 2-D axial tissue slices at
    ``spacing`` mm (see the module docstring); returns the dataset folder.

    ``options`` (``overwrite``, ``workers``, ``progress``) go to :func:`~nnunet_ext.conversion.writer.convert_dataset`.
    """
    _check_options(spacing, gap, test_fraction, min_brain)
    folder = nilearn_data_folder() if source is None else Path(source)
    template = {key: resample(volume, spacing) for key, volume in read_template(folder).items()}
    grey = sitk.GetArrayFromImage(template["grey_matter"])
    labels = tissue_labels(grey, sitk.GetArrayFromImage(template["white_matter"]))
    roles = assign_slices((labels > 0).mean(axis=(1, 2)).tolist(), spacing, gap, test_fraction, min_brain)
    label_volume = sitk.GetImageFromArray(labels)
    label_volume.CopyInformation(template["t1"])
    sources = tuple(folder / file_name for file_name in SOURCE_FILES.values())
    case_ids = [f"MNI152_z{k:03d}" if role in ROLES else "" for k, role in enumerate(roles)]
    cases = [
        TemplateSliceCase(
            case_ids[k], ROLES[role], template["t1"][:, :, k : k + 1], label_volume[:, :, k : k + 1], sources
        )
        for k, role in enumerate(roles)
        if role in ROLES
    ]
    heights = [template["t1"].TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(len(roles))]
    description = DatasetDescription(
        name,
        {0: "T1"},
        LABELS,
        ".nii.gz",
        {
            **METADATA,
            "description": (
                f"ICBM152 2009a symmetric template, axial slices at {spacing:g} mm; label = argmax(clip(1 - p_gm - "
                f"p_wm, 0, 1), p_gm, p_wm); test slab from the middle of the brain, separated from the training "
                f"slices by >= {gap:g} mm; slices.csv lists every slice"
            ),
        },
    )
    return convert_dataset(
        cases,
        description,
        output_root,
        dataset_id,
        extra_files={SLICES_FILE: _slices_table(case_ids, roles, heights, labels)},
        input_root=folder,
        **options,
    )


def _bounded_float(low: float, high: float, what: str, low_open: bool = False):
    """A ``ValueError``-raising parser of a number in [low, high) (``(low, high)`` when ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if not (low < value if low_open else low <= value) or not value < high:
            raise ValueError(f"{what} must be in {'(' if low_open else '['}{low:g}, {high:g}), got {value:g}")
        return value

    return argument_type(parse)


def build_parser() -> argparse.ArgumentParser:
    parser = converter_parser(
        __doc__.splitlines()[0],
        DATASET_ID,
        NAME,
        epilog=__doc__.split("\n", 2)[2],
        input_help="a folder holding the three template files (default: the installed nilearn's copy)",
    )
    parser.add_argument(
        "--spacing",
        type=_bounded_float(0, math.inf, "the spacing", low_open=True),
        default=DEFAULT_SPACING,
        help="isotropic spacing in mm of the resampled template (in-plane pixel size and slice distance)",
    )
    parser.add_argument(
        "--gap",
        type=_bounded_float(0, math.inf, "the gap"),
        default=DEFAULT_GAP,
        help="mm of left-out slices on either side of the test slab",
    )
    parser.add_argument(
        "--test-fraction",
        type=_bounded_float(0, 1, "the test fraction", low_open=True),
        default=DEFAULT_TEST_FRACTION,
        help="share of the brain slices in the test slab",
    )
    parser.add_argument(
        "--min-brain",
        type=_bounded_float(0, 1, "the brain share"),
        default=DEFAULT_MIN_BRAIN,
        help="slices with a smaller share of grey/white-matter pixels are left out",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(
        build_parser(),
        lambda args, common: convert_mni152(
            spacing=args.spacing, gap=args.gap, test_fraction=args.test_fraction, min_brain=args.min_brain, **common
        ),
        argv,
    )
