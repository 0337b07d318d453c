"""The unlabeled pool of a training run, and nnU-Net's data loader over it, reading images only.

The pool of a fold (:func:`discover_unlabeled_pool`) has up to three sources, each case keyed ``{source}/{case}``:

- ``split``: the fold's label-less training cases of ``splits_ssl.json``, read from nnU-Net's labeled folder;
- ``real`` / ``synthetic``: the preprocessed ``imagesUl/`` / ``imagesSynth/`` pools of this plans/configuration.

:class:`UnlabeledDataset` opens a case's image (``{case}.b2nd``) and nothing else: neither its segmentation nor its
``.pkl`` (whose class locations are derived from the labels) is read, so a scheme can never see the label of a pool
case. nnU-Net's loader still crops a segmentation alongside the image; it gets :class:`ZeroSegmentation`, which
allocates zeros for the crop only, and :class:`nnUNetUnlabeledDataLoader` drops the ``target`` from its batches.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import blosc2
import numpy as np
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunet_ext.ssl.layout import POOL_RAW_FOLDERS, SPLIT_POOL, pool_folder, pool_manifest
from nnunet_ext.ssl.preprocessing import StalePoolError, completed_cases
from nnunet_ext.ssl.splits import SSLFold

SOURCES = (SPLIT_POOL, *POOL_RAW_FOLDERS)

#: environment variable restricting the sources a semi-supervised run draws its pool from (comma-separated)
POOL_VARIABLE = "nnUNet_ext_pool"


def pool_sources(default: Iterable[str] = SOURCES, environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The pool sources of a run: ``nnUNet_ext_pool`` (e.g. ``synthetic`` or ``split,real``) if set, else ``default``.

    Lets one labeled split be compared with different pools (the real label-less slices, an LDM's synthetic images,
    both) without touching the split or the preprocessed pools.

    Raises:
        ValueError: an unknown or repeated source, or an empty list (the message names the variable and the choices).
    """
    value = environ.get(POOL_VARIABLE, "").strip()
    if not value:
        return tuple(default)
    sources = tuple(part.strip() for part in value.split(","))
    if not set(sources) <= set(SOURCES) or len(set(sources)) != len(sources):
        raise ValueError(
            f"environment variable {POOL_VARIABLE}={value!r}: expected distinct comma-separated sources out of "
            f"{', '.join(SOURCES)}"
        )
    return sources


class EmptyPoolError(RuntimeError):
    """A semi-supervised run found no unlabeled case."""


class ZeroSegmentation:
    """An all-zero int16 segmentation of ``shape`` that materialises only the slices taken from it."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(shape)

    def __getitem__(self, key) -> np.ndarray:
        return np.zeros(np.broadcast_to(np.int16(0), self.shape)[key].shape, dtype=np.int16)


class UnlabeledDataset:
    """nnU-Net's dataset interface (``identifiers``, ``load_case``) over image files only.

    Args:
        image_files: case key -> its preprocessed image (``.b2nd``).
    """

    def __init__(self, image_files: Mapping[str, str | os.PathLike]):
        self.image_files = {key: str(path) for key, path in image_files.items()}
        self.identifiers = sorted(self.image_files)
        blosc2.set_nthreads(1)
        self._mmap = {} if os.name == "nt" else {"mmap_mode": "r"}  # as nnUNetDatasetBlosc2: no mmap on Windows

    def __len__(self) -> int:
        return len(self.identifiers)

    def load_case(self, identifier: str) -> tuple[blosc2.NDArray, ZeroSegmentation, None, dict]:
        """``(data (C, Z, Y, X), zero segmentation (1, Z, Y, X), no previous stage, properties without locations)``."""
        data = blosc2.open(urlpath=self.image_files[identifier], mode="r", dparams={"nthreads": 1}, **self._mmap)
        return data, ZeroSegmentation((1, *data.shape[1:])), None, {"class_locations": {}}


class nnUNetUnlabeledDataLoader(nnUNetDataLoader):
    """nnU-Net's loader with random patches and batches ``{'data', 'keys'}`` (no ``target``).

    Foreground oversampling is off and the ignore label does not steer sampling (both need labels).
    """

    def __init__(
        self,
        data: UnlabeledDataset,
        batch_size: int,
        patch_size: Iterable[int],
        final_patch_size: Iterable[int],
        label_manager: LabelManager,
        transforms=None,
    ):
        super().__init__(
            data,
            batch_size,
            patch_size,
            final_patch_size,
            label_manager,
            oversample_foreground_percent=0.0,
            transforms=transforms,
        )
        self.has_ignore = False

    def generate_train_batch(self) -> dict:
        batch = super().generate_train_batch()
        del batch["target"]
        return batch


@dataclass
class UnlabeledPool:
    """The unlabeled cases of a run: key ``{source}/{case}`` -> image file, and notes for the log."""

    image_files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def count(self, source: str) -> int:
        return sum(key.startswith(f"{source}/") for key in self.image_files)

    def describe(self) -> str:
        counts = ", ".join(f"{self.count(source)} {source}" for source in SOURCES)
        return f"Unlabeled pool: {len(self.image_files)} cases ({counts})"


def discover_unlabeled_pool(
    preprocessed_dataset_folder: str | os.PathLike,
    labeled_folder: str | os.PathLike,
    data_identifier: str,
    ssl_fold: SSLFold | None,
    plans_fingerprint: str,
    num_input_channels: int,
    sources: Iterable[str] = SOURCES,
    raw_dataset_folder: str | os.PathLike | None = None,
) -> UnlabeledPool:
    """Collect and check the unlabeled cases of a run.

    Args:
        labeled_folder: nnU-Net's preprocessed folder of the configuration (holds the ``split`` cases).
        ssl_fold: the fold of ``splits_ssl.json``, or None (no ``split`` source).
        plans_fingerprint: :func:`nnunet_ext.ssl.preprocessing.plans_fingerprint` of the run's plans.
        sources: which of ``split``, ``real``, ``synthetic`` to draw from.
        raw_dataset_folder: if given, raw pool images without a preprocessed case are noted.

    Raises:
        StalePoolError: a preprocessed pool belongs to other plans, or has another channel count.
        FileNotFoundError: the image of a ``split`` case is missing from the labeled folder.
        EmptyPoolError: no unlabeled case at all; the message says how to provide some.
    """
    pool = UnlabeledPool()
    sources = tuple(sources)
    if SPLIT_POOL in sources and ssl_fold is not None:
        for case in ssl_fold.unlabeled:
            image = Path(labeled_folder) / f"{case}.b2nd"
            if not image.is_file():
                raise FileNotFoundError(f"{image}: image of the label-less training case {case} is missing")
            pool.image_files[f"{SPLIT_POOL}/{case}"] = str(image)
    for source in (s for s in sources if s in POOL_RAW_FOLDERS):
        folder = pool_folder(preprocessed_dataset_folder, data_identifier, source)
        cases = _checked_pool_cases(
            folder,
            pool_manifest(preprocessed_dataset_folder, data_identifier, source),
            plans_fingerprint,
            num_input_channels,
        )
        pool.image_files.update({f"{source}/{case}": str(folder / f"{case}.b2nd") for case in sorted(cases)})
        if raw_dataset_folder is not None:
            pool.notes += _unpreprocessed_raw_images(Path(raw_dataset_folder) / POOL_RAW_FOLDERS[source], cases)
    if not pool.image_files:
        raise EmptyPoolError(_empty_pool_message(preprocessed_dataset_folder, data_identifier, ssl_fold, sources))
    return pool


def _checked_pool_cases(folder: Path, manifest_file: Path, fingerprint: str, num_input_channels: int) -> set[str]:
    """The done cases of a preprocessed pool, after checking its manifest and the channels of every image."""
    if not folder.is_dir():
        return set()
    if not manifest_file.is_file():
        raise StalePoolError(f"{folder} has no manifest {manifest_file}; re-run nnUNetv2_ext_preprocess_unlabeled")
    manifest = json.loads(manifest_file.read_text())
    if manifest["plans_fingerprint"] != fingerprint:
        raise StalePoolError(
            f"{folder} was preprocessed with other plans than this training uses (plans {manifest['plans']!r}, "
            f"configuration {manifest['configuration']!r} changed since); re-run nnUNetv2_ext_preprocess_unlabeled "
            "with --overwrite"
        )
    cases = completed_cases(folder)
    for case in sorted(cases):
        image = folder / f"{case}.b2nd"
        channels = blosc2.open(urlpath=str(image), mode="r").shape[0]
        if channels != num_input_channels:
            raise StalePoolError(f"{image}: {channels} channel(s), the network takes {num_input_channels}")
    return cases


def _unpreprocessed_raw_images(raw_pool: Path, done: set[str]) -> list[str]:
    """A note if ``raw_pool`` has images (first channel files) without a preprocessed case."""
    if not raw_pool.is_dir():
        return []
    raw_cases = {p.name.split("_0000.")[0] for p in raw_pool.iterdir() if "_0000." in p.name}
    missing = raw_cases - done
    if not missing:
        return []
    return [
        f"WARNING: {len(missing)} image(s) of {raw_pool} are not preprocessed for this configuration (e.g. "
        f"{sorted(missing)[0]}); run nnUNetv2_ext_preprocess_unlabeled to include them"
    ]


def _empty_pool_message(
    preprocessed_dataset_folder: str | os.PathLike, data_identifier: str, ssl_fold: SSLFold | None, sources: tuple
) -> str:
    folder = Path(preprocessed_dataset_folder)
    elsewhere = sorted(
        p.name for p in folder.glob("*_unlabeled") if p.is_dir() and p.name != f"{data_identifier}_unlabeled"
    )
    lines = [
        f"No unlabeled cases for semi-supervised training (sources {', '.join(sources)}; looked in "
        f"{folder / (data_identifier + '_unlabeled')} and {folder / 'splits_ssl.json'}).",
        "Provide some by either:",
        "  - nnUNetv2_ext_preprocess_unlabeled -d ID -c CONFIGURATION [-p PLANS] (images in imagesUl/ or "
        "imagesSynth/ of the raw dataset), or",
        "  - nnUNetv2_ext_ssl_split -d ID --labeled-fraction F (keeps the labels of a fraction of each fold's "
        "training cases, the others become unlabeled).",
    ]
    if set(sources) != set(SOURCES):
        lines.append(f"This run draws only from {', '.join(sources)} (the trainer's sources or {POOL_VARIABLE}).")
    if ssl_fold is not None and not ssl_fold.unlabeled:
        lines.append("splits_ssl.json keeps every training case of this fold labeled.")
    if elsewhere:
        lines.append(f"Pools exist for other plans/configurations only: {', '.join(elsewhere)}.")
    return "\n".join(lines)
