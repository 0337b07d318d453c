"""What a synthesis run reads: the dataset, its plans and 2D configuration, and the training cases of one fold.

The training cases come from nnU-Net's ``splits_final.json`` in ``$nnUNet_preprocessed/DatasetXXX_Name/``, so no
validation case of the fold is ever seen (``fold="all"``: every training case). Without that file the split is
created exactly as nnU-Net's trainer does on its first run (``generate_crossval_split`` of the sorted case
identifiers, seed 12345, 5 folds) and saved there, so a later ``nnUNetv2_train`` uses the same folds.

The images are the RAW ``imagesTr`` files, read with the dataset's own reader
(``determine_reader_writer_from_dataset_json``), so synthetic images can be written in the same format and range.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
from nnunetv2.imageio.nibabel_reader_writer import NibabelIO
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

from nnunet_ext.ssl.splits import SPLITS_FINAL_FILE, load_or_create_splits_final

#: readers whose files we can write back so that the same reader returns the same array (no reorientation)
WRITABLE_READERS: tuple[type[BaseReaderWriter], ...] = (NaturalImage2DIO, SimpleITKIO, NibabelIO)


class SynthesisInputError(ValueError):
    """The dataset, configuration, fold or images cannot be used for synthesis; the message says why."""


@dataclass(frozen=True)
class SynthesisSource:
    """The dataset, configuration and fold cases of one synthesis run.

    ``transpose_forward`` is the plans' axis order: the 2d configuration slices along the first axis after it.
    """

    dataset_name: str
    raw_folder: Path
    preprocessed_folder: Path
    dataset_json: dict
    plans_identifier: str
    configuration: str
    transpose_forward: tuple[int, ...]
    fold: int | str
    cases: dict[str, tuple[str, ...]]
    reader_class: type[BaseReaderWriter]

    @property
    def file_ending(self) -> str:
        return self.dataset_json["file_ending"]

    @property
    def fold_tag(self) -> str:
        return str(self.fold)

    @property
    def synthetic_folder(self) -> Path:
        return self.raw_folder / "imagesSynth"


def environment_folder(variable: str) -> Path:
    """``$nnUNet_raw`` / ``$nnUNet_preprocessed`` / ``$nnUNet_results``, read now (not at import time)."""
    value = os.environ.get(variable)
    if not value:
        raise SynthesisInputError(f"${variable} is not set (see nnU-Net's documentation on setting up paths)")
    return Path(value)


def find_dataset_name(dataset_id: int | str) -> str:
    """``DatasetXXX_Name`` in ``$nnUNet_raw`` for an id (or the name itself)."""
    raw = environment_folder("nnUNet_raw")
    if isinstance(dataset_id, str) and dataset_id.startswith("Dataset"):
        candidates = [raw / dataset_id]
    else:
        candidates = sorted(raw.glob(f"Dataset{int(dataset_id):03d}_*"))
    candidates = [c for c in candidates if c.is_dir()]
    if len(candidates) != 1:
        found = "no" if not candidates else f"{len(candidates)}"
        raise SynthesisInputError(f"dataset {dataset_id}: {found} matching folder(s) in $nnUNet_raw ({raw})")
    return candidates[0].name


def fold_training_cases(splits: list[dict], fold: int | str, all_cases: list[str], splits_file: Path) -> list[str]:
    if fold == "all":
        return sorted(all_cases)
    if not 0 <= int(fold) < len(splits):
        raise SynthesisInputError(f"fold {fold}: {splits_file} defines folds 0..{len(splits) - 1}")
    training = sorted(splits[int(fold)]["train"])
    missing = sorted(set(training) - set(all_cases))
    if missing:
        raise SynthesisInputError(f"{splits_file}, fold {fold}: training cases without images in imagesTr: {missing}")
    return training


def resolve_source(
    dataset_id: int | str, configuration: str, fold: int | str, plans_identifier: str = "nnUNetPlans"
) -> SynthesisSource:
    """Locate everything a run needs and reject what the LDM cannot use, before any training.

    Raises:
        SynthesisInputError: unknown dataset, missing plans, unknown or 3D configuration, unknown fold, or a
            reader whose images cannot be written back faithfully.
    """
    dataset_name = find_dataset_name(dataset_id)
    raw_folder = environment_folder("nnUNet_raw") / dataset_name
    preprocessed_folder = environment_folder("nnUNet_preprocessed") / dataset_name
    dataset_json = json.loads((raw_folder / "dataset.json").read_text())
    plans_file = preprocessed_folder / f"{plans_identifier}.json"
    if not plans_file.is_file():
        raise SynthesisInputError(
            f"{plans_file} does not exist: plan the dataset first (nnUNetv2_plan_and_preprocess -d {dataset_id})"
        )
    plans = PlansManager(str(plans_file))
    if configuration not in plans.available_configurations:
        raise SynthesisInputError(
            f"configuration {configuration!r} is not in {plans_file} (available: {plans.available_configurations})"
        )
    if len(plans.get_configuration(configuration).patch_size) != 2:
        raise SynthesisInputError(
            f"configuration {configuration!r} is 3D: the LDM synthesizes 2D images; use the 2d configuration "
            "(3D volumes are then sliced along its axis)"
        )
    all_cases = get_filenames_of_train_images_and_targets(str(raw_folder), dataset_json)
    splits_file = preprocessed_folder / SPLITS_FINAL_FILE
    splits = [] if fold == "all" else load_or_create_splits_final(preprocessed_folder, list(all_cases))
    training = fold_training_cases(splits, fold, list(all_cases), splits_file)
    cases = {case: tuple(all_cases[case]["images"]) for case in training}
    example = next(iter(cases.values()))[0]
    reader_class = determine_reader_writer_from_dataset_json(dataset_json, example, verbose=False)
    if reader_class not in WRITABLE_READERS:
        raise SynthesisInputError(
            f"images read with {reader_class.__name__} are not supported (supported readers: "
            f"{', '.join(r.__name__ for r in WRITABLE_READERS)})"
        )
    return SynthesisSource(
        dataset_name=dataset_name,
        raw_folder=raw_folder,
        preprocessed_folder=preprocessed_folder,
        dataset_json=dataset_json,
        plans_identifier=plans_identifier,
        configuration=configuration,
        transpose_forward=tuple(plans.transpose_forward),
        fold=fold,
        cases=cases,
        reader_class=reader_class,
    )
