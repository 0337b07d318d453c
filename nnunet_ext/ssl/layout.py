"""Where the unlabeled pool and the semi-supervised split live (raw and preprocessed).

Raw, beside nnU-Net's ``imagesTr/``::

    $nnUNet_raw/DatasetXXX_Name/imagesUl/      real unlabeled images  (pool "real")
    $nnUNet_raw/DatasetXXX_Name/imagesSynth/   synthetic images       (pool "synthetic")

Both use nnU-Net's image naming ``{case}_{XXXX}{file_ending}`` with the channels and file ending of the dataset.

Preprocessed, per plans and configuration (``data_identifier``, e.g. ``nnUNetPlans_2d``), next to -- never inside --
nnU-Net's labeled folder, which ``nnUNetv2_preprocess`` deletes and re-creates::

    $nnUNet_preprocessed/DatasetXXX_Name/
        nnUNetPlans_2d/                       nnU-Net's labeled training cases
        nnUNetPlans_2d_unlabeled/real/        {case}.b2nd, {case}_seg.b2nd (dummy), {case}.pkl (no class locations)
        nnUNetPlans_2d_unlabeled/real.json    manifest: plans fingerprint, channels, source folder
        nnUNetPlans_2d_unlabeled/synthetic/ and synthetic.json
        splits_final.json                     nnU-Net's folds
        splits_ssl.json                       per fold: labeled / unlabeled / val cases (nnUNetv2_ext_ssl_split)
"""

from __future__ import annotations

import os
from pathlib import Path

#: pool name -> raw folder (beside imagesTr) holding its images
POOL_RAW_FOLDERS: dict[str, str] = {"real": "imagesUl", "synthetic": "imagesSynth"}

#: the semi-supervised split, in the dataset's preprocessed folder
SSL_SPLITS_FILE = "splits_ssl.json"

#: nnU-Net's cross-validation split, in the dataset's preprocessed folder
SPLITS_FINAL_FILE = "splits_final.json"

#: prefix of the unlabeled-batch keys of label-less training cases from the semi-supervised split
SPLIT_POOL = "split"


def unlabeled_root(preprocessed_dataset_folder: str | os.PathLike, data_identifier: str) -> Path:
    """``{preprocessed}/{data_identifier}_unlabeled``: all pools of one plans/configuration."""
    return Path(preprocessed_dataset_folder) / f"{data_identifier}_unlabeled"


def pool_folder(preprocessed_dataset_folder: str | os.PathLike, data_identifier: str, pool: str) -> Path:
    """The folder of the preprocessed cases of ``pool`` ("real" or "synthetic")."""
    return unlabeled_root(preprocessed_dataset_folder, data_identifier) / pool


def pool_manifest(preprocessed_dataset_folder: str | os.PathLike, data_identifier: str, pool: str) -> Path:
    """The manifest written beside :func:`pool_folder` (``{pool}.json``)."""
    return unlabeled_root(preprocessed_dataset_folder, data_identifier) / f"{pool}.json"
