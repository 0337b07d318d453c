"""ACDC (cine-MRI, 100 training + 50 testing patients) -> ``Dataset027_ACDC``.

Official layout (``database/`` of the humanheart-project download; --input may be ``database/`` or its parent)::

    training/patient001/Info.cfg, patient001_4d.nii.gz, patient001_frame01.nii.gz, patient001_frame01_gt.nii.gz,
                        patient001_frame12.nii.gz, patient001_frame12_gt.nii.gz
    testing/patient101/...

The output is identical to nnU-Net's own ``Dataset027_ACDC`` converter: every frame that is neither ``_4d`` nor
``_gt`` is copied unchanged to ``imagesTr/patient001_frame01_0000.nii.gz``, its ``_gt`` to
``labelsTr/patient001_frame01.nii.gz``, testing frames to imagesTs; channel ``cineMRI``; labels background 0,
RV 1, MLV 2, LVC 3. Its patient-wise 5-fold split (``create_ACDC_split``, seed 1234: ED and ES of one patient
stay in one fold) is written as ``splits_final.json`` next to dataset.json (nnU-Net's planner copies it into
nnUNet_preprocessed). ``--with-test-labels`` also copies the testing ``_gt`` files to labelsTs (nnU-Net ignores
them).

Alternative input (``--layout npz``, the MT-UNet/GCGLE-Net 2-D variant)::

    train/case_001_sliceED_0.npz ...  valid/...  test/case_002_volume_ED.npz ...   (keys 'img' and 'label')

Slices ``case_XXX_slice{ED,ES}_K`` are stacked in K order into volumes, ``case_XXX_volume_{ED,ES}`` are volumes
already; train + valid -> imagesTr/labelsTr as ``patientXXX_{ED,ES}``, test -> imagesTs/labelsTs; the same
patient-wise split. The release carries no spacing: 1 x 1 mm in-plane and 10 mm between slices are written
(MT-UNet's ``z_spacing=10``). The folder a file is in decides its split; ``lists_ACDC`` is not needed.
"""

from __future__ import annotations

import argparse
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunet_ext.conversion.cases import ArrayVolumeCase, Case, VolumeCase
from nnunet_ext.conversion.cli import converter_parser, run
from nnunet_ext.conversion.errors import ConversionWarning, MissingPartnerError, SourceLayoutError, SourceProblem
from nnunet_ext.conversion.writer import DatasetDescription, convert_dataset

DATASET_ID, NAME = 27, "ACDC"
LABELS = {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}
CHANNELS = {0: "cineMRI"}
NPZ_SPACING_ZYX = (10.0, 1.0, 1.0)
_NPZ_NAME = re.compile(r"^case_(?P<patient>\d+)_(?:slice(?P<phase>ED|ES)_(?P<index>\d+)|volume_(?P<vphase>ED|ES))$")


def acdc_split(case_ids: Sequence[str], seed: int = 1234) -> list[dict[str, list[str]]]:
    """nnU-Net's ``create_ACDC_split``: patients (first 10 characters) shuffled with ``RandomState(seed)``,
    fold k validates on ``patients[k::5]``. Cases are listed in sorted order, as nnU-Net lists ``labelsTr``. With
    fewer than 5 patients the last folds have no validation case: a :class:`ConversionWarning` says which."""
    cases = sorted(case_ids)
    patients = np.unique([case[: len("patient000")] for case in cases])
    if len(patients) < 5:
        warnings.warn(
            f"only {len(patients)} training patient(s): folds {', '.join(map(str, range(len(patients), 5)))} of "
            "the 5-fold splits_final.json have no validation case (nnU-Net cannot validate them); train on the "
            "other folds or add patients",
            ConversionWarning,
            stacklevel=2,
        )
    np.random.RandomState(seed).shuffle(patients)
    splits = []
    for fold in range(5):
        val_patients = set(patients[fold::5])
        splits.append(
            {
                "train": [case for case in cases if case[: len("patient000")] not in val_patients],
                "val": [case for case in cases if case[: len("patient000")] in val_patients],
            }
        )
    return splits


def database_root(source: Path) -> Path:
    for candidate in (source, source / "database"):
        if (candidate / "training").is_dir():
            return candidate
    raise SourceLayoutError(f"{source}: no training/ folder (nor database/training/)")


def official_cases(source: Path, with_test_labels: bool) -> tuple[list[Case], list[SourceProblem]]:
    """Frames (not ``_4d``, not ``_gt``) of every patient folder, paired with their ``_gt``."""
    root = database_root(source)
    cases: list[Case] = []
    problems: list[SourceProblem] = []
    allowed = frozenset(LABELS.values())
    for folder, split in (("training", "Tr"), ("testing", "Ts")):
        if not (root / folder).is_dir():
            continue
        for patient in sorted(p for p in (root / folder).iterdir() if p.is_dir()):
            for frame in sorted(patient.glob("*.nii.gz")):
                if "_gt" in frame.name or "_4d" in frame.name:
                    continue
                case_id = frame.name[: -len(".nii.gz")]
                label = patient / f"{case_id}_gt.nii.gz"
                wanted = split == "Tr" or with_test_labels
                if wanted and not label.is_file():
                    problems.append(MissingPartnerError(frame, f"no {label.name} beside it"))
                    continue
                cases.append(VolumeCase(case_id, split, frame, label if wanted else None, allowed))
            for label in sorted(patient.glob("*_gt.nii.gz")):
                if not (patient / label.name.replace("_gt", "")).is_file():
                    problems.append(MissingPartnerError(label, "no image frame for this _gt file"))
    return cases, problems


def npz_cases(source: Path) -> tuple[list[Case], list[SourceProblem]]:
    """Volumes of the 2-D npz variant: slices grouped per patient and phase, stacked by slice index."""
    groups: dict[tuple[str, str], dict] = {}
    for folder, split in (("train", "Tr"), ("valid", "Tr"), ("test", "Ts")):
        if not (source / folder).is_dir():
            continue
        for path in sorted((source / folder).glob("*.npz")):
            match = _NPZ_NAME.match(path.stem)
            if match is None:
                raise SourceLayoutError(
                    f"{path}: not named case_XXX_slice{{ED,ES}}_K.npz or case_XXX_volume_{{ED,ES}}.npz"
                )
            case_id = f"patient{int(match['patient']):03d}_{match['phase'] or match['vphase']}"
            group = groups.setdefault((split, case_id), {"slices": {}, "volume": None})
            if match["index"] is not None:
                group["slices"][int(match["index"])] = path
            else:
                group["volume"] = path
    if not any(split == "Tr" for split, _ in groups):
        raise SourceLayoutError(f"{source}: no train/*.npz or valid/*.npz files")
    cases: list[Case] = []
    problems: list[SourceProblem] = []
    allowed = frozenset(LABELS.values())
    for (split, case_id), group in sorted(groups.items()):
        slices = group["slices"]
        if group["volume"] is not None and slices:
            raise SourceLayoutError(f"{group['volume']}: {case_id} exists both as slices and as a volume")
        if slices:
            missing = sorted(set(range(max(slices) + 1)) - set(slices))
            if missing:
                first = next(iter(slices.values()))
                problems.append(
                    MissingPartnerError(first, f"{case_id}: slice(s) {missing} of 0..{max(slices)} missing")
                )
                continue
            files, stacked = [slices[k] for k in sorted(slices)], True
        else:
            files, stacked = [group["volume"]], False
        cases.append(ArrayVolumeCase(case_id, split, files, "img", "label", allowed, NPZ_SPACING_ZYX, stacked))
    return cases, problems


def convert_acdc(
    source: Path,
    output_root: Path,
    dataset_id: int = DATASET_ID,
    name: str = NAME,
    layout: str = "official",
    with_test_labels: bool = False,
    **options,
) -> Path:
    """Convert ACDC (``layout``: official or npz); returns the dataset folder.

    ``options`` (``overwrite``, ``workers``, ``progress``) go to :func:`~nnunet_ext.conversion.writer.convert_dataset`.
    """
    if layout == "official":
        cases, problems = official_cases(source, with_test_labels)
    else:
        cases, problems = npz_cases(source)
    training = [case.case_id for case in cases if case.split == "Tr"]
    return convert_dataset(
        cases,
        DatasetDescription(name, dict(CHANNELS), dict(LABELS), ".nii.gz"),
        output_root,
        dataset_id,
        splits=acdc_split(training) if training else None,
        input_root=source,
        case_map=False,
        known_problems=problems,
        **options,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = converter_parser(__doc__.splitlines()[0], DATASET_ID, NAME, epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--layout", choices=("official", "npz"), default="official", help="source layout")
    parser.add_argument(
        "--with-test-labels", action="store_true", help="official layout: copy testing _gt files to labelsTs"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(
        build_parser(),
        lambda args, common: convert_acdc(layout=args.layout, with_test_labels=args.with_test_labels, **common),
        argv,
    )
