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
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from nnunet_ext.conversion import images_masks
from nnunet_ext.conversion.cli import converter_parser, run
from nnunet_ext.conversion.images_masks import FolderLayout
from nnunet_ext.conversion.labels import MaskLabels, parse_label_map

DATASET_ID, NAME = 82, "OCT"
DEFAULT_LABEL_MAP = "background=0;edema=1;hole=2"
VOC_FOLDERS = (Path("VOCdevkit/VOC2007"), Path("VOC2007"), Path("."))


def detect_layout(source: Path, layout: FolderLayout) -> FolderLayout:
    """``layout`` if its image folder exists below ``source``, else the VOC layout found there."""
    if (source / layout.images_dir).is_dir():
        return layout
    for base in VOC_FOLDERS:
        if (source / base / "JPEGImages").is_dir() and (source / base / "SegmentationClass").is_dir():
            return dataclasses.replace(
                layout, images_dir=str(base / "JPEGImages"), masks_dir=str(base / "SegmentationClass")
            )
    return layout


def build_parser() -> argparse.ArgumentParser:
    parser = converter_parser(__doc__.splitlines()[0], DATASET_ID, NAME, epilog=__doc__.split("\n", 2)[2])
    images_masks.add_folder_options(parser, "images", "masks")
    images_masks.add_mask_options(parser, channels="gray", foreground="lesion", label_map=DEFAULT_LABEL_MAP)
    return parser


def convert_oct(
    source: Path,
    output_root: Path,
    dataset_id: int = DATASET_ID,
    name: str = NAME,
    channel_mode: str = "gray",
    decoder: MaskLabels = parse_label_map(DEFAULT_LABEL_MAP),
    layout: FolderLayout = FolderLayout(),
    **options,
) -> Path:
    """Convert an OCT images + masks set (VOC layout detected when ``layout``'s image folder is absent).

    ``options`` (``overwrite``, ``workers``, ``progress``) go to :func:`~nnunet_ext.conversion.writer.convert_dataset`.
    """
    pairs, problems = detect_layout(source, layout).pairs(source)
    return images_masks.convert_pairs(
        pairs,
        problems,
        source,
        output_root,
        dataset_id,
        name,
        channel_mode=channel_mode,
        decoder=decoder,
        gray_channel_name="OCT",
        **options,
    )


def main(argv: Sequence[str] | None = None) -> int:
    def convert(args: argparse.Namespace, common: dict) -> Path:
        decoder = images_masks.decoder_from_args(args)
        layout = images_masks.FolderLayout.from_args(args)
        return convert_oct(channel_mode=args.channels, decoder=decoder, layout=layout, **common)

    return run(build_parser(), convert, argv)
