"""OCT macular edema / macular hole -> ``Dataset082_OCT`` (generic images + masks converter).

No public copy or description of this dataset is known; the layouts below are informed defaults:

- ``images/<name>.jpg|png`` + ``masks/<name>.png`` (default), or
- VOC style (the unet-pytorch projects it most likely comes from), detected automatically:
  ``[VOCdevkit/VOC2007/]JPEGImages/<name>.jpg`` + ``SegmentationClass/<name>.png``.

Masks are decoded with ``--label-map``; the default reads class-id masks (gray or palette PNG with
0 = background, 1 = edema, 2 = hole). For 0/128/255 masks pass ``--label-map 'background=0;edema=128;hole=255'``,
for colour masks ``'background=0,0,0;edema=255,0,0;hole=0,0,255'``. Images become one gray channel by default
(``--channels rgb`` keeps colour). Everything goes to imagesTr unless ``--test-list`` names test images
(e.g. VOC's ``ImageSets/Segmentation/test.txt``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from nnunet_ext.conversion import images_masks
from nnunet_ext.conversion.cli import converter_parser, run

DATASET_ID, NAME = 82, "OCT"
DEFAULT_LABEL_MAP = "background=0;edema=1;hole=2"
VOC_FOLDERS = (Path("VOCdevkit/VOC2007"), Path("VOC2007"), Path("."))


def detect_folders(source: Path, images: str, masks: str) -> tuple[str, str]:
    """``(images, masks)`` relative to ``source``: the given ones if they exist, else a VOC layout."""
    if (source / images).is_dir():
        return images, masks
    for base in VOC_FOLDERS:
        if (source / base / "JPEGImages").is_dir() and (source / base / "SegmentationClass").is_dir():
            return str(base / "JPEGImages"), str(base / "SegmentationClass")
    return images, masks


def build_parser() -> argparse.ArgumentParser:
    parser = converter_parser(__doc__.splitlines()[0], DATASET_ID, NAME, epilog=__doc__.split("\n", 2)[2])
    images_masks.add_folder_options(parser, "images", "masks")
    images_masks.add_mask_options(parser, channels="gray", foreground="lesion", label_map=DEFAULT_LABEL_MAP)
    return parser


def convert(args: argparse.Namespace, common: dict) -> Path:
    args.images_dir, args.masks_dir = detect_folders(common["source"], args.images_dir, args.masks_dir)
    pairs, problems = images_masks.pairs_from_args(args, common["source"])
    return images_masks.convert_pairs(
        pairs,
        problems,
        channel_mode=args.channels,
        decoder=images_masks.decoder_from_args(args),
        gray_channel_name="OCT",
        **common,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), convert, argv)
