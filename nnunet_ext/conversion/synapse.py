"""Synapse multi-organ CT (BTCV abdomen, 30 labelled cases) -> ``Dataset017_Synapse``, TransUNet's 18/12 split.

Two sources (``--layout auto`` picks by the folders present):

``btcv``: the raw release (``RawData.zip``; --input may be RawData/ or its parent)::

    RawData/Training/img/img0001.nii.gz ...   RawData/Training/label/label0001.nii.gz ...
    RawData/Testing/img/img0061.nii.gz ...    (20 unlabelled volumes; to imagesUl/ with --unlabeled)

  Images are copied unchanged (HU as-is, channel ``CT``: nnU-Net's CT normalisation). Labels are renumbered
  to ``--organs`` (default: the 8 organs in SAMed's order, 1 spleen, 2 right kidney, 3 left kidney,
  4 gallbladder, 5 liver, 6 stomach, 7 aorta, 8 pancreas; the other organs become background; ``--organs all``
  keeps the 13 BTCV labels). Sources disagree on TransUNet's label order; the SAMed order is a default.

``transunet``: TransUNet's preprocessed release::

    train_npz/case0005_slice000.npz ...   (keys image, label; 2-D slices)
    test_vol_h5/case0001.npy.h5 ...       (keys image, label; (D, H, W) volumes)
    lists_Synapse/train.txt, test_vol.txt (optional; found in --input, --input/lists/lists_Synapse or --lists)

  Slices are stacked per case in slice order. Labels are already 0..8; ``--organs`` only names labels 1..8.
  The intensities were clipped to [-125, 275] HU and scaled to [0, 1]: by default they are kept and the channel
  is named ``noNorm`` (nnU-Net leaves them as they are, the network sees TransUNet's input);
  ``--intensity hu`` maps them back to HU (x * 400 - 125, clipped HU) with channel ``CT``. The release has no
  spacing: (1, 1, 1) mm is written.

Split (TransUNet's list files): cases 5 6 7 9 10 21 23 24 26 27 28 30 31 33 34 37 39 40 -> imagesTr/labelsTr,
1 2 3 4 8 22 25 29 32 35 36 38 -> imagesTs/labelsTs. Case ids are ``case0001`` ... in both layouts.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

from nnunet_ext.conversion.cases import ArrayVolumeCase, Case, VolumeCase
from nnunet_ext.conversion.cli import converter_parser, run
from nnunet_ext.conversion.errors import MissingPartnerError, SourceLayoutError, SourceProblem
from nnunet_ext.conversion.images_masks import read_name_list
from nnunet_ext.conversion.labels import remap_lut
from nnunet_ext.conversion.writer import DatasetDescription, convert_dataset

DATASET_ID, NAME = 17, "Synapse"
TRAIN_CASES = (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
TEST_CASES = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)
BTCV_ORGANS = (
    "spleen",
    "right_kidney",
    "left_kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior_vena_cava",
    "portal_and_splenic_vein",
    "pancreas",
    "right_adrenal_gland",
    "left_adrenal_gland",
)
SAMED_ORGANS = ("spleen", "right_kidney", "left_kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas")
TRANSUNET_CLIP = (-125.0, 275.0)
METADATA = {"reference": "https://www.synapse.org/#!Synapse:syn3193805", "split": "TransUNet 18 train / 12 test"}
_CASE = re.compile(r"^(?:img|label|case)(\d{4})")


def parse_organs(text: str) -> tuple[str, ...]:
    """``--organs``: comma-separated BTCV organ names in label order, or ``all`` (the 13 BTCV labels)."""
    if text == "all":
        return BTCV_ORGANS
    organs = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [organ for organ in organs if organ not in BTCV_ORGANS]
    if unknown or len(set(organs)) != len(organs):
        raise argparse.ArgumentTypeError(f"organs must be distinct names of {BTCV_ORGANS}, got {organs}")
    return organs


def labels_for(organs: Sequence[str]) -> dict[str, int]:
    return {"background": 0, **{organ: index for index, organ in enumerate(organs, start=1)}}


def _case_number(path: Path) -> int | None:
    match = _CASE.match(path.name)
    return int(match.group(1)) if match else None


def btcv_root(source: Path) -> Path:
    for candidate in (source, source / "RawData"):
        if (candidate / "Training" / "img").is_dir():
            return candidate
    raise SourceLayoutError(f"{source}: no Training/img/ (nor RawData/Training/img/)")


def btcv_cases(source: Path, organs: Sequence[str], unlabeled: bool) -> tuple[list[Case], list[SourceProblem]]:
    """The 30 labelled cases by the 18/12 split (labels renumbered to ``organs``), optionally Testing -> Ul."""
    root = btcv_root(source)
    lut = remap_lut(
        {BTCV_ORGANS.index(organ) + 1: target for organ, target in labels_for(organs).items() if organ != "background"},
        len(BTCV_ORGANS),
    )
    allowed = frozenset(range(len(BTCV_ORGANS) + 1))
    problems: list[SourceProblem] = []
    cases: list[Case] = []
    for numbers, split in ((TRAIN_CASES, "Tr"), (TEST_CASES, "Ts")):
        for number in numbers:
            image = root / "Training" / "img" / f"img{number:04d}.nii.gz"
            label = root / "Training" / "label" / f"label{number:04d}.nii.gz"
            missing = [path for path in (image, label) if not path.is_file()]
            problems += [MissingPartnerError(path, f"case {number} of the 18/12 split not found") for path in missing]
            if not missing:
                cases.append(VolumeCase(f"case{number:04d}", split, image, label, allowed, lut))
    if unlabeled:
        testing = root / "Testing" / "img"
        if not testing.is_dir():
            raise SourceLayoutError(f"{testing}: not found (needed for --unlabeled)")
        for image in sorted(testing.glob("img*.nii.gz")):
            cases.append(VolumeCase(f"case{_case_number(image):04d}", "Ul", image))
    return cases, problems


def _lists_folder(source: Path, lists: Path | None) -> Path | None:
    candidates = (
        [lists] if lists is not None else [source, source / "lists" / "lists_Synapse", source / "lists_Synapse"]
    )
    for folder in candidates:
        if (folder / "train.txt").is_file() and (folder / "test_vol.txt").is_file():
            return folder
    if lists is not None:
        raise SourceLayoutError(f"{lists}: no train.txt and test_vol.txt")
    return None


def transunet_cases(source: Path, lists: Path | None, to_hu: bool) -> tuple[list[Case], list[SourceProblem]]:
    """Training cases from stacked ``train_npz`` slices, test cases from ``test_vol_h5`` volumes (``to_hu``:
    intensities mapped from [0, 1] back to the clipped HU range)."""
    train_dir, test_dir = source / "train_npz", source / "test_vol_h5"
    for folder in (train_dir, test_dir):
        if not folder.is_dir():
            raise SourceLayoutError(f"{folder}: not found")
    lists_folder = _lists_folder(source, lists)
    if lists_folder is not None:
        slice_names = read_name_list(lists_folder / "train.txt")
        test_names = [name.removesuffix(".npy.h5") for name in read_name_list(lists_folder / "test_vol.txt")]
    else:
        slice_names = [path.stem for path in sorted(train_dir.glob("*.npz"))]
        test_names = [path.name.removesuffix(".npy.h5") for path in sorted(test_dir.glob("*.npy.h5"))]
    problems: list[SourceProblem] = []
    slices: dict[str, dict[int, Path]] = {}
    for slice_name in slice_names:
        case, _, index = slice_name.partition("_slice")
        path = train_dir / f"{slice_name}.npz"
        if not index.isdigit():
            raise SourceLayoutError(f"{slice_name}: not a caseXXXX_sliceKKK name")
        if not path.is_file():
            problems.append(MissingPartnerError(path, "listed slice not found"))
        slices.setdefault(case, {})[int(index)] = path
    allowed = frozenset(range(len(SAMED_ORGANS) + 1))
    low, high = TRANSUNET_CLIP
    intensity = {"intensity_scale": high - low, "intensity_offset": low} if to_hu else {}
    cases: list[Case] = []
    for case, by_index in sorted(slices.items()):
        gaps = sorted(set(range(max(by_index) + 1)) - set(by_index))
        if gaps:
            problems.append(
                MissingPartnerError(train_dir / f"{case}_slice{gaps[0]:03d}.npz", f"{case}: slices {gaps} missing")
            )
        files = [by_index[k] for k in sorted(by_index)]
        if not gaps and all(path.is_file() for path in files):
            cases.append(ArrayVolumeCase(case, "Tr", files, "image", "label", allowed, slices=True, **intensity))
    for case in test_names:
        path = test_dir / f"{case}.npy.h5"
        if not path.is_file():
            problems.append(MissingPartnerError(path, "listed test volume not found"))
            continue
        cases.append(ArrayVolumeCase(case, "Ts", [path], "image", "label", allowed, **intensity))
    return cases, problems


def detect_layout(source: Path) -> str:
    if (source / "train_npz").is_dir():
        return "transunet"
    btcv_root(source)
    return "btcv"


def convert_synapse(
    source: Path,
    output_root: Path,
    dataset_id: int = DATASET_ID,
    name: str = NAME,
    layout: str = "auto",
    organs: Sequence[str] = SAMED_ORGANS,
    unlabeled: bool = False,
    lists: Path | None = None,
    intensity: str = "keep",
    **options,
) -> Path:
    """Convert Synapse (``layout``: auto, btcv or transunet); returns the dataset folder.

    ``options`` (``overwrite``, ``workers``, ``progress``) go to :func:`~nnunet_ext.conversion.writer.convert_dataset`.
    """
    layout = detect_layout(source) if layout == "auto" else layout
    channel = "CT"
    if layout == "btcv":
        cases, problems = btcv_cases(source, organs, unlabeled)
    else:
        if len(organs) != len(SAMED_ORGANS):
            raise SourceLayoutError(f"the TransUNet release has 8 organ labels; --organs names {len(organs)}")
        cases, problems = transunet_cases(source, lists, to_hu=intensity == "hu")
        channel = "CT" if intensity == "hu" else "noNorm"
    metadata = {**METADATA, "source_layout": layout}
    return convert_dataset(
        cases,
        DatasetDescription(name, {0: channel}, labels_for(organs), ".nii.gz", metadata),
        output_root,
        dataset_id,
        input_root=source,
        known_problems=problems,
        **options,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = converter_parser(__doc__.splitlines()[0], DATASET_ID, NAME, epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--layout", choices=("auto", "btcv", "transunet"), default="auto", help="source layout")
    parser.add_argument(
        "--organs",
        type=parse_organs,
        default=SAMED_ORGANS,
        help=f"output labels 1..N as comma-separated BTCV organ names, or 'all' (13 labels); default: "
        f"{','.join(SAMED_ORGANS)}. Names: {','.join(BTCV_ORGANS)}",
    )
    parser.add_argument("--unlabeled", action="store_true", help="btcv: RawData/Testing/img -> imagesUl/")
    parser.add_argument("--lists", type=Path, default=None, help="transunet: folder with train.txt and test_vol.txt")
    parser.add_argument(
        "--intensity",
        choices=("keep", "hu"),
        default="keep",
        help="transunet: keep the [0, 1] values (channel noNorm) or map back to HU (channel CT)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(
        build_parser(),
        lambda args, common: convert_synapse(
            layout=args.layout,
            organs=args.organs,
            unlabeled=args.unlabeled,
            lists=args.lists,
            intensity=args.intensity,
            **common,
        ),
        argv,
    )
