"""Thyroid ultrasound (TUS-style, TN3K, DDTI) -> ``Dataset083_Thyroid`` (generic images + masks converter).

Formats (``--format auto`` picks by the folders present):

- ``tus``: ``images/<name>`` + ``masks/<name>`` (PNG/JPG, binary 0/255 or 0/1). TUS itself is private; this is
  the generic layout assumed for it. Everything to imagesTr unless ``--test-list``.
- ``tn3k``: ``trainval-image/0000.jpg`` + ``trainval-mask/0000.jpg`` -> imagesTr (cases ``trainval_0000``),
  ``test-image/`` + ``test-mask/`` -> imagesTs/labelsTs (``test_0000``). The masks are JPEG: thresholded at >127.
  ``tn3k-trainval-fold{0..4}.json`` (``{"train": [i...], "val": [i...]}``, indices into the trainval images
  sorted by the integer value of their names) become ``splits_final.json``; folds numbered without gaps from 0,
  indices in range, none repeated or in both train and val of a fold; a warning names images that no fold
  validates (a missing last fold file).
- ``ddti``: the 637-image PNG release, ``[DDTI dataset/][DDTI/]1_or_data/{image,mask}/0000.PNG`` (uppercase
  suffix), or ``{image,mask}/`` directly (TRFE-Net's ``data/DDTI``). Everything to imagesTr.

Images become one gray channel (``--channels rgb`` keeps colour); masks are binary unless ``--label-map``.
"""

from __future__ import annotations

import argparse
import json
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from nnunet_ext.conversion import images_masks
from nnunet_ext.conversion.cli import converter_parser, run
from nnunet_ext.conversion.errors import ConversionWarning, SourceLayoutError, SourceProblem
from nnunet_ext.conversion.images import is_image_file
from nnunet_ext.conversion.images_masks import FolderLayout, ImageMaskFolders, SourcePair, pair_folder
from nnunet_ext.conversion.labels import BinaryMask, MaskLabels

DATASET_ID, NAME = 83, "Thyroid"
FORMATS = ("auto", "tus", "tn3k", "ddti")
_FOLD_FILE = re.compile(r"tn3k-trainval-fold(\d+)\.json")
DDTI_BASES = (Path("DDTI dataset/DDTI/1_or_data"), Path("DDTI/1_or_data"), Path("1_or_data"), Path("."))


def ddti_base(source: Path) -> Path | None:
    """The folder holding DDTI's ``image/`` and ``mask/``, if any."""
    for base in DDTI_BASES:
        if (source / base / "image").is_dir() and (source / base / "mask").is_dir():
            return source / base
    return None


def detect_format(source: Path) -> str:
    if (source / "trainval-image").is_dir():
        return "tn3k"
    if ddti_base(source) is not None:
        return "ddti"
    if (source / "images").is_dir():
        return "tus"
    raise SourceLayoutError(f"{source}: none of trainval-image/ (TN3K), [..]/image + mask/ (DDTI), images/ (TUS)")


def tn3k_fold_files(source: Path) -> list[Path]:
    """``tn3k-trainval-fold{0..k-1}.json`` in fold order; a gap in the numbering is an error."""
    numbered = {}
    for path in source.glob("tn3k-trainval-fold*.json"):
        match = _FOLD_FILE.fullmatch(path.name)
        if match is None:
            raise SourceLayoutError(f"{path}: not named tn3k-trainval-fold<number>.json")
        numbered[int(match[1])] = path
    missing = sorted(set(range(max(numbered, default=-1) + 1)) - set(numbered))
    if missing:
        raise SourceLayoutError(
            f"{source}: fold file(s) {', '.join(f'tn3k-trainval-fold{k}.json' for k in missing)} missing "
            f"(found folds {sorted(numbered)}; folds are numbered from 0)"
        )
    return [numbered[k] for k in sorted(numbered)]


def read_tn3k_fold(fold_file: Path, num_images: int) -> dict[str, list[int]]:
    """A TN3K fold file, ``{"train": [i, ...], "val": [i, ...]}``: non-empty lists of distinct indices into the
    ``num_images`` trainval images, no index in both. Anything else raises :class:`SourceLayoutError`."""
    try:
        fold = json.loads(fold_file.read_text())
    except (OSError, ValueError) as error:
        raise SourceLayoutError(f"{fold_file}: not a readable JSON file ({error})") from error
    if not isinstance(fold, dict) or not {"train", "val"} <= set(fold):
        raise SourceLayoutError(f'{fold_file}: expected {{"train": [indices], "val": [indices]}}')
    for key in ("train", "val"):
        indices = fold[key]
        if not isinstance(indices, list) or not indices or not all(type(i) is int for i in indices):
            raise SourceLayoutError(f"{fold_file}: '{key}' must be a non-empty list of integer image indices")
        outside = [i for i in indices if not 0 <= i < num_images]
        if outside:
            raise SourceLayoutError(
                f"{fold_file}: '{key}' indices {outside[:10]} are outside 0..{num_images - 1} "
                f"(there are {num_images} trainval images)"
            )
        repeated = sorted(i for i, count in Counter(indices).items() if count > 1)
        if repeated:
            raise SourceLayoutError(f"{fold_file}: '{key}' lists indices {repeated[:10]} more than once")
    both = sorted(set(fold["train"]) & set(fold["val"]))
    if both:
        raise SourceLayoutError(f"{fold_file}: indices {both[:10]} are in both 'train' and 'val'")
    return {"train": fold["train"], "val": fold["val"]}


def tn3k_pairs(source: Path) -> tuple[list[SourcePair], list[SourceProblem], list[dict] | None]:
    """TN3K pairs and its fold files as nnU-Net splits (by pair name) or ``None`` when there are none."""
    pairs, problems = pair_folder(
        ImageMaskFolders(source / "trainval-image", source / "trainval-mask", "Tr", name_prefix="trainval_")
    )
    if (source / "test-image").is_dir():
        test, test_problems = pair_folder(
            ImageMaskFolders(source / "test-image", source / "test-mask", "Ts", name_prefix="test_")
        )
        pairs, problems = pairs + test, problems + test_problems
    fold_files = tn3k_fold_files(source)
    if not fold_files:
        return pairs, problems, None
    try:
        stems = (p.stem for p in (source / "trainval-image").iterdir() if is_image_file(p))
        ordered = [f"trainval_{stem}" for stem in sorted(stems, key=int)]
    except ValueError as error:
        raise SourceLayoutError(
            f"{source / 'trainval-image'}: fold files need integer image names ({error})"
        ) from error
    folds = [read_tn3k_fold(fold_file, len(ordered)) for fold_file in fold_files]
    never_validated = sorted(set(range(len(ordered))) - {i for fold in folds for i in fold["val"]})
    if never_validated:
        warnings.warn(
            f"{len(never_validated)} trainval image(s) are in no fold's 'val' (e.g. indices {never_validated[:5]}): "
            f"cross-validation folds cover every image once; is a fold file missing? (found {len(folds)})",
            ConversionWarning,
            stacklevel=2,
        )
    return pairs, problems, [{key: [ordered[i] for i in fold[key]] for key in ("train", "val")} for fold in folds]


def build_parser() -> argparse.ArgumentParser:
    parser = converter_parser(__doc__.splitlines()[0], DATASET_ID, NAME, epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--format", choices=FORMATS, default="auto", help="source format (see below)")
    images_masks.add_folder_options(parser, "images", "masks")
    images_masks.add_mask_options(parser, channels="gray", foreground="nodule", label_map=None)
    return parser


def convert_thyroid(
    source: Path,
    output_root: Path,
    dataset_id: int = DATASET_ID,
    name: str = NAME,
    source_format: str = "auto",
    channel_mode: str = "gray",
    decoder: MaskLabels = BinaryMask("nodule"),
    layout: FolderLayout = FolderLayout(),
    **options,
) -> Path:
    """Convert a thyroid ultrasound set (``source_format``: auto, tus, tn3k or ddti; ``layout`` for tus).

    ``options`` (``overwrite``, ``workers``, ``progress``) go to :func:`~nnunet_ext.conversion.writer.convert_dataset`.
    """
    source_format = detect_format(source) if source_format == "auto" else source_format
    splits = None
    if source_format == "tn3k":
        pairs, problems, splits = tn3k_pairs(source)
    elif source_format == "ddti":
        base = ddti_base(source)
        if base is None:
            raise SourceLayoutError(f"{source}: DDTI image/ and mask/ folders not found")
        pairs, problems = pair_folder(ImageMaskFolders(base / "image", base / "mask"))
    else:
        pairs, problems = layout.pairs(source)
    return images_masks.convert_pairs(
        pairs,
        problems,
        source,
        output_root,
        dataset_id,
        name,
        channel_mode=channel_mode,
        decoder=decoder,
        gray_channel_name="ultrasound",
        splits=splits,
        **options,
    )


def main(argv: Sequence[str] | None = None) -> int:
    def convert(args: argparse.Namespace, common: dict) -> Path:
        decoder = images_masks.decoder_from_args(args)
        layout = FolderLayout.from_args(args)
        return convert_thyroid(
            source_format=args.format, channel_mode=args.channels, decoder=decoder, layout=layout, **common
        )

    return run(build_parser(), convert, argv)
