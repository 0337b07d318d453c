"""The generic 2-D converter: ``images/`` + ``masks/`` folders with matching file names -> nnU-Net PNG dataset.

Used as is for OCT (082) and the thyroid ultrasound sets (083), and for the images/masks variants of ISIC (080)
and BUSI (081). Pairing is by file stem (the part before the extension, compared exactly; extensions are
case-insensitive, so DDTI's ``.PNG`` and TN3K's ``.jpg`` masks pair too); a mask may carry a suffix
(``<stem><mask_suffix>.png``, ISIC's ``_segmentation``). Files that are not images (``.txt``, ``.csv``,
``Thumbs.db``...) are ignored. Images are re-encoded losslessly as PNG; masks are decoded to labels by a
:mod:`~nnunet_ext.conversion.labels` decoder (binary thresholding by default, or ``--label-map``).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nnunet_ext.conversion.case_ids import unique_case_ids
from nnunet_ext.conversion.cases import ImageMaskCase, MaskDecoder
from nnunet_ext.conversion.cli import label_map_argument
from nnunet_ext.conversion.errors import MissingPartnerError, SourceLayoutError, SourceProblem
from nnunet_ext.conversion.images import CHANNEL_MODES, is_image_file
from nnunet_ext.conversion.labels import BinaryMask, MaskLabels
from nnunet_ext.conversion.writer import DatasetDescription, convert_dataset


@dataclass(frozen=True)
class ImageMaskFolders:
    """One folder of images and the folder of their masks (``masks=None``: images without masks, e.g. a test set)."""

    images: Path
    masks: Path | None
    split: str = "Tr"
    mask_suffix: str = ""
    name_prefix: str = ""


@dataclass
class SourcePair:
    """A source image, its masks and the split it goes to; ``name`` becomes the (sanitised) case id."""

    name: str
    image: Path
    masks: list[Path]
    split: str


def _images_by_stem(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise SourceLayoutError(f"{folder}: {what} folder not found")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not is_image_file(path):
            continue
        if path.stem in found:
            raise SourceLayoutError(f"{path} and {found[path.stem]}: two {what} with the same name")
        found[path.stem] = path
    return found


def pair_folder(folders: ImageMaskFolders) -> tuple[list[SourcePair], list[SourceProblem]]:
    """Pair every image with its mask; images without a mask and masks without an image are problems."""
    images = _images_by_stem(folders.images, "image")
    if not images:
        raise SourceLayoutError(f"{folders.images}: no image files (.png/.jpg/.bmp/.tif)")
    pairs: list[SourcePair] = []
    problems: list[SourceProblem] = []
    masks = _images_by_stem(folders.masks, "mask") if folders.masks is not None else {}
    for stem, image in images.items():
        mask = masks.pop(stem + folders.mask_suffix, None)
        if folders.masks is not None and mask is None:
            problems.append(MissingPartnerError(image, f"no mask {stem}{folders.mask_suffix}.* in {folders.masks}"))
            continue
        pairs.append(SourcePair(folders.name_prefix + stem, image, [mask] if mask else [], folders.split))
    problems += [MissingPartnerError(mask, f"no image for this mask in {folders.images}") for mask in masks.values()]
    return pairs, problems


def images_masks_pairs(source: Path) -> tuple[list[SourcePair], list[SourceProblem]]:
    """``images/`` + ``masks/0/`` (UNeXt/CMUNeXt) or ``masks/`` (DCSAU-Net/GCGLE-Net), identical file names."""
    masks = source / "masks" / "0" if (source / "masks" / "0").is_dir() else source / "masks"
    return pair_folder(ImageMaskFolders(source / "images", masks))


def read_name_list(path: Path) -> list[str]:
    """Names from a list file, one per line (CRLF, blank lines and extensions tolerated)."""
    if not path.is_file():
        raise SourceLayoutError(f"{path}: list file not found")
    names = [line.strip() for line in path.read_text().splitlines()]
    return [
        Path(name).stem if Path(name).suffix.lower() in (".png", ".jpg", ".jpeg", ".npz") else name
        for name in names
        if name
    ]


def move_listed_to_test(pairs: list[SourcePair], test_list: Path) -> None:
    """Cases whose source image stem is in ``test_list`` go to imagesTs/labelsTs."""
    names = set(read_name_list(test_list))
    by_stem = {pair.image.stem: pair for pair in pairs}
    unknown = sorted(names - set(by_stem))
    if unknown:
        raise SourceLayoutError(f"{test_list}: lists names without an image: {unknown[:10]}")
    for name in names:
        by_stem[name].split = "Ts"


def image_mask_cases(pairs: Sequence[SourcePair], channel_mode: str, decoder: MaskDecoder) -> list[ImageMaskCase]:
    """Cases with unique safe ids built from the pair names."""
    ids = unique_case_ids(pair.name for pair in pairs)
    return [
        ImageMaskCase(ids[pair.name], pair.split, pair.image, pair.masks, channel_mode, decoder if pair.masks else None)
        for pair in pairs
    ]


def channel_names_for(channel_mode: str, gray_name: str) -> dict[int, str]:
    """``{0: gray_name}`` or nnU-Net's RGB naming ``{0: 'R', 1: 'G', 2: 'B'}`` (Dataset120_RoadSegmentation)."""
    return {0: "R", 1: "G", 2: "B"} if channel_mode == "rgb" else {0: gray_name}


def convert_pairs(
    pairs: list[SourcePair],
    problems: list[SourceProblem],
    source: Path,
    output_root: Path,
    dataset_id: int,
    name: str,
    *,
    channel_mode: str,
    decoder: MaskLabels,
    gray_channel_name: str,
    metadata: dict | None = None,
    splits: list[dict] | None = None,
    **options,
) -> Path:
    """Write paired 2-D images as ``DatasetXXX_name`` (PNG, labels from ``decoder``); ``splits`` name pairs.

    ``options`` (``overwrite``, ``workers``, ``progress``) go to :func:`convert_dataset`.
    """
    cases = image_mask_cases(pairs, channel_mode, decoder)
    description = DatasetDescription(
        name, channel_names_for(channel_mode, gray_channel_name), decoder.labels, ".png", metadata or {}
    )
    if splits is not None:
        ids = {pair.name: case.case_id for pair, case in zip(pairs, cases)}
        # names of pairs dropped for a problem stay as they are: validation reports the problem first
        splits = [{key: [ids.get(n, n) for n in fold[key]] for key in ("train", "val")} for fold in splits]
    return convert_dataset(
        cases,
        description,
        output_root,
        dataset_id,
        splits=splits,
        input_root=source,
        known_problems=problems,
        **options,
    )


def add_mask_options(parser: argparse.ArgumentParser, channels: str, foreground: str, label_map: str | None) -> None:
    """``--channels``, ``--label-map``, ``--label-tolerance``, ``--foreground-name``."""
    parser.add_argument(
        "--channels",
        choices=CHANNEL_MODES,
        default=channels,
        help="gray: one channel (colour-stored images converted to luma); rgb: R,G,B in one PNG",
    )
    parser.add_argument(
        "--label-map",
        type=label_map_argument,
        default=label_map,
        help="mask values or colours -> labels, in label order starting with background: "
        "'background=0;edema=128;hole=255' (gray values / palette indices), "
        "'background=0,0,0;edema=255,0,0' (colours), alternatives with '|', or a .json file "
        "{name: value | [r,g,b]}. Default: "
        + (f"'{label_map}'" if label_map else "binary masks (0/1 or 0/255, thresholded at >127)"),
    )
    parser.add_argument(
        "--label-tolerance",
        type=int,
        default=0,
        help="with --label-map: accept values within this distance of a table entry (e.g. 20 for JPEG masks)",
    )
    parser.add_argument("--foreground-name", default=foreground, help="label name of binary masks' foreground")


def decoder_from_args(args: argparse.Namespace) -> MaskLabels:
    """The mask decoder selected by :func:`add_mask_options`."""
    if args.label_map is None:
        return BinaryMask(args.foreground_name)
    return dataclasses.replace(args.label_map, tolerance=args.label_tolerance)


def add_folder_options(parser: argparse.ArgumentParser, images: str, masks: str) -> None:
    """``--images-dir``, ``--masks-dir``, ``--mask-suffix``, ``--test-list``."""
    parser.add_argument("--images-dir", default=images, help="image folder, relative to --input")
    parser.add_argument("--masks-dir", default=masks, help="mask folder, relative to --input")
    parser.add_argument("--mask-suffix", default="", help="mask name = image stem + this suffix (any extension)")
    parser.add_argument(
        "--test-list",
        type=Path,
        default=None,
        help="text file of image names (one per line, extension optional) that go to imagesTs/labelsTs; "
        "all other cases go to imagesTr/labelsTr",
    )


@dataclass(frozen=True)
class FolderLayout:
    """Where the generic converter finds images and masks below the input folder (``--images-dir`` ...)."""

    images_dir: str = "images"
    masks_dir: str = "masks"
    mask_suffix: str = ""
    test_list: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FolderLayout:
        return cls(args.images_dir, args.masks_dir, args.mask_suffix, args.test_list)

    def pairs(self, source: Path) -> tuple[list[SourcePair], list[SourceProblem]]:
        """Pair the images with their masks below ``source`` and apply the test list."""
        pairs, problems = pair_folder(
            ImageMaskFolders(source / self.images_dir, source / self.masks_dir, mask_suffix=self.mask_suffix)
        )
        if self.test_list is not None:
            move_listed_to_test(pairs, self.test_list)
        return pairs, problems
