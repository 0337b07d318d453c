"""BUSI (Breast Ultrasound Images) -> ``Dataset081_BUSI``.

Kaggle layout (``Dataset_BUSI.zip``; --input may be Dataset_BUSI_with_GT/ or the folder holding it)::

    Dataset_BUSI_with_GT/benign/benign (1).png, benign (1)_mask.png, benign (1)_mask_1.png, ...
    Dataset_BUSI_with_GT/malignant/malignant (1).png, malignant (1)_mask.png, ...
    Dataset_BUSI_with_GT/normal/normal (1).png, normal (1)_mask.png (empty masks), ...

Several masks of one image (``_mask``, ``_mask_1``, ``_mask_2``: one per tumour) are OR-ed; how many images
have extra masks is not documented anywhere attributable, every ``_mask_<n>`` found is used. Names with
spaces and parentheses become safe case ids (``benign (1)`` -> ``benign_1``); ``case_ids.csv`` in the dataset
folder maps them back. Whether some images are stored as RGB/RGBA is unverified: every image is converted to
one gray channel (exact for grayscale stored as RGB). ``--drop-normal`` leaves out the normal class.

Alternative layout (CMUNeXt/CMU-Net): ``images/<name>.png`` + ``masks/0/<name>.png`` (same names), all to
imagesTr unless ``--test-list``. Everything goes to imagesTr: BUSI has no official split.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

from nnunet_ext.conversion import images_masks
from nnunet_ext.conversion.cli import converter_parser, run
from nnunet_ext.conversion.errors import MissingPartnerError, SourceLayoutError, SourceProblem
from nnunet_ext.conversion.images import is_image_file
from nnunet_ext.conversion.images_masks import SourcePair
from nnunet_ext.conversion.labels import BinaryMask

DATASET_ID, NAME = 81, "BUSI"
CLASSES = ("benign", "malignant", "normal")
KAGGLE_FOLDER = "Dataset_BUSI_with_GT"
_MASK = re.compile(r"^(?P<image>.+)_mask(_\d+)?$")
METADATA = {
    "reference": "https://doi.org/10.1016/j.dib.2019.104863",
    "description": "BUSI breast ultrasound; all masks of an image OR-ed; case_ids.csv maps case ids to files.",
}


def kaggle_root(source: Path) -> Path:
    """The folder holding benign/ malignant/ normal/ (``source`` or ``source/Dataset_BUSI_with_GT``)."""
    for candidate in (source, source / KAGGLE_FOLDER):
        if (candidate / "benign").is_dir() and (candidate / "malignant").is_dir():
            return candidate
    raise SourceLayoutError(f"{source}: no benign/ and malignant/ folders (nor {KAGGLE_FOLDER}/ holding them)")


def kaggle_pairs(source: Path, drop_normal: bool = False) -> tuple[list[SourcePair], list[SourceProblem]]:
    """Images with their ``_mask``/``_mask_<n>`` files, per class folder; unpaired files are problems."""
    root = kaggle_root(source)
    pairs: list[SourcePair] = []
    problems: list[SourceProblem] = []
    for class_name in CLASSES[:2] if drop_normal else CLASSES:
        folder = root / class_name
        if not folder.is_dir():
            raise SourceLayoutError(f"{folder}: class folder not found (pass --drop-normal to leave 'normal' out)")
        files = [p for p in sorted(folder.iterdir()) if is_image_file(p)]
        masks: dict[str, list[Path]] = {}
        images: dict[str, Path] = {}
        for path in files:
            match = _MASK.match(path.stem)
            if match:
                masks.setdefault(match["image"], []).append(path)
            else:
                images[path.stem] = path
        for stem, image in images.items():
            found = masks.pop(stem, [])
            if not found:
                problems.append(MissingPartnerError(image, f"no {stem}_mask.png beside it"))
                continue
            pairs.append(SourcePair(stem, image, found, "Tr"))
        for stem, orphans in masks.items():
            problems += [MissingPartnerError(mask, f"no image {stem}.png beside this mask") for mask in orphans]
    return pairs, problems


def convert_busi(
    source: Path,
    output_root: Path,
    dataset_id: int = DATASET_ID,
    name: str = NAME,
    layout: str = "auto",
    drop_normal: bool = False,
    test_list: Path | None = None,
    **options,
) -> Path:
    """Convert BUSI (``layout``: auto, kaggle or images-masks); returns the dataset folder.

    ``options`` (``overwrite``, ``workers``, ``progress``) go to :func:`~nnunet_ext.conversion.writer.convert_dataset`.
    """
    if layout == "auto":
        layout = "images-masks" if (source / "images").is_dir() and (source / "masks").is_dir() else "kaggle"
    if layout == "kaggle":
        pairs, problems = kaggle_pairs(source, drop_normal)
    else:
        pairs, problems = images_masks.images_masks_pairs(source)
        if drop_normal:
            pairs = [pair for pair in pairs if not pair.name.startswith("normal")]
    if test_list is not None:
        images_masks.move_listed_to_test(pairs, test_list)
    return images_masks.convert_pairs(
        pairs,
        problems,
        source,
        output_root,
        dataset_id,
        name,
        channel_mode="gray",
        decoder=BinaryMask("tumor", hint="BUSI masks are binary; this file is damaged or not a BUSI mask"),
        gray_channel_name="ultrasound",
        metadata=METADATA,
        **options,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = converter_parser(__doc__.splitlines()[0], DATASET_ID, NAME, epilog=__doc__.split("\n", 2)[2])
    parser.add_argument(
        "--layout",
        choices=("auto", "kaggle", "images-masks"),
        default="auto",
        help="source layout (auto: images-masks if images/ and masks/ exist, else kaggle)",
    )
    parser.add_argument("--drop-normal", action="store_true", help="leave out the 'normal' images (empty masks)")
    parser.add_argument("--test-list", type=Path, default=None, help="names that go to imagesTs/labelsTs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(
        build_parser(),
        lambda args, common: convert_busi(
            layout=args.layout, drop_normal=args.drop_normal, test_list=args.test_list, **common
        ),
        argv,
    )
