"""ISIC 2018 Task 1 (lesion boundary segmentation) -> ``Dataset080_ISIC2018``.

Official layout (the challenge zips extracted side by side)::

    ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg ...
    ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png ...
    ISIC2018_Task1-2_Validation_Input/  ISIC2018_Task1_Validation_GroundTruth/
    ISIC2018_Task1-2_Test_Input/        ISIC2018_Task1_Test_GroundTruth/

Training -> imagesTr/labelsTr; Validation and Test -> imagesTs/labelsTs (images only where the ground-truth
folder is absent). Alternative layout: ``images/<id>.png`` + ``masks/<id>.png`` or ``masks/0/<id>.png``
(DCSAU-Net/GCGLE-Net and UNeXt/CMUNeXt), all to imagesTr unless ``--test-list``.

JPEGs are decoded and re-encoded losslessly as PNG (no further loss), one ``_0000.png`` with 3 channels R,G,B
(as nnU-Net's Dataset120_RoadSegmentation); masks 0/255 -> 0/1 with robust thresholding (>127; 0/1 masks kept).
Files other than images (``LICENSE.txt``, ``ATTRIBUTION.txt``) are ignored.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from nnunet_ext.conversion import images_masks
from nnunet_ext.conversion.cli import converter_parser, run
from nnunet_ext.conversion.errors import SourceLayoutError, SourceProblem
from nnunet_ext.conversion.images import is_image_file
from nnunet_ext.conversion.images_masks import ImageMaskFolders, SourcePair, pair_folder
from nnunet_ext.conversion.labels import BinaryMask

DATASET_ID, NAME = 80, "ISIC2018"
OFFICIAL_SPLITS = {"Training": "Tr", "Validation": "Ts", "Test": "Ts"}
METADATA = {
    "reference": "https://challenge.isic-archive.com/landing/2018/45/",
    "description": "ISIC 2018 Task 1 lesion boundary segmentation; Validation and Test in imagesTs/labelsTs.",
}


def _mask_suffix(masks: Path) -> str:
    """``_segmentation`` (2018) or ``_Segmentation`` (2016/2017 naming), from the first mask file."""
    first = next((p for p in sorted(masks.iterdir()) if is_image_file(p)), None)
    return "_Segmentation" if first is not None and first.stem.endswith("_Segmentation") else "_segmentation"


def official_pairs(source: Path) -> tuple[list[SourcePair], list[SourceProblem]]:
    """Pairs from the challenge folders; Training must exist, Validation/Test are optional."""
    pairs: list[SourcePair] = []
    problems: list[SourceProblem] = []
    for split_name, split in OFFICIAL_SPLITS.items():
        images = source / f"ISIC2018_Task1-2_{split_name}_Input"
        masks = source / f"ISIC2018_Task1_{split_name}_GroundTruth"
        if not images.is_dir():
            if split == "Tr":
                raise SourceLayoutError(f"{images}: training input folder not found")
            continue
        has_masks = masks.is_dir()
        if split == "Tr" and not has_masks:
            raise SourceLayoutError(f"{masks}: training ground-truth folder not found")
        folder = ImageMaskFolders(images, masks if has_masks else None, split, _mask_suffix(masks) if has_masks else "")
        found, found_problems = pair_folder(folder)
        pairs += found
        problems += found_problems
    return pairs, problems


def detect_layout(source: Path) -> str:
    if (source / "ISIC2018_Task1-2_Training_Input").is_dir():
        return "official"
    if (source / "images").is_dir() and (source / "masks").is_dir():
        return "images-masks"
    raise SourceLayoutError(f"{source}: neither ISIC2018_Task1-2_Training_Input/ (official) nor images/ + masks/ found")


def convert_isic(
    source: Path,
    output_root: Path,
    dataset_id: int = DATASET_ID,
    name: str = NAME,
    layout: str = "auto",
    test_list: Path | None = None,
    **options,
) -> Path:
    """Convert ISIC 2018 Task 1 (``layout``: auto, official or images-masks); returns the dataset folder.

    ``options`` (``overwrite``, ``workers``, ``progress``) go to :func:`~nnunet_ext.conversion.writer.convert_dataset`.
    """
    layout = detect_layout(source) if layout == "auto" else layout
    if layout == "official":
        pairs, problems = official_pairs(source)
    else:
        pairs, problems = images_masks.images_masks_pairs(source)
        if test_list is not None:
            images_masks.move_listed_to_test(pairs, test_list)
    return images_masks.convert_pairs(
        pairs,
        problems,
        source,
        output_root,
        dataset_id,
        name,
        channel_mode="rgb",
        decoder=BinaryMask("lesion", hint="ISIC masks are binary; this file is damaged or not an ISIC mask"),
        gray_channel_name="dermoscopy",
        metadata=METADATA,
        **options,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = converter_parser(__doc__.splitlines()[0], DATASET_ID, NAME, epilog=__doc__.split("\n", 2)[2])
    parser.add_argument(
        "--layout",
        choices=("auto", "official", "images-masks"),
        default="auto",
        help="source layout (auto: official if ISIC2018_Task1-2_Training_Input/ exists)",
    )
    parser.add_argument(
        "--test-list", type=Path, default=None, help="images-masks layout: names that go to imagesTs/labelsTs"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return run(parser, lambda args, common: convert_isic(layout=args.layout, test_list=args.test_list, **common), argv)
