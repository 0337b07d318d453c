"""AMOS 2022 -> ``Dataset218_AMOS2022_postChallenge_task1`` (CT only) or ``..._task2`` (219, CT + MRI).

Layout (the post-challenge release, zenodo 7262581, which has the validation labels)::

    amos22/dataset.json   ("training", "validation", "test" lists; "labels" {"0": "background", ...};
                           its keys and names carry the release's typos: "licence", label 8 "arota")
    amos22/imagesTr/amos_0001.nii.gz  labelsTr/amos_0001.nii.gz
    amos22/imagesVa/amos_0008.nii.gz  labelsVa/amos_0008.nii.gz
    amos22/imagesTs/amos_0002.nii.gz

Consistent with nnU-Net's own Dataset218/219 converters: the cases listed in dataset.json are copied unchanged,
validation merged into training (imagesTr/labelsTr; nnU-Net's 5-fold CV instead of the official val split), test
to imagesTs; task 1 keeps the CT ids (training <= 410, validation <= 409, test <= 500; MRI ids are > 500);
channel ``CT`` (task 1) or ``either_CT_or_MR`` (task 2, no CT normalisation); labels and names from the source
dataset.json (typos kept, as nnU-Net does); reader ``NibabelIOWithReorient``.

``--protocol guidednet`` (task 1 only): GuidedNet's CT-only re-split of the 300 CT cases of training +
validation into 180 train / 60 val / 60 test. GuidedNet's list files are not shipped here: pass them with
``--split-lists DIR`` (train.txt, val.txt, test.txt of AMOS ids, CRLF and missing final newline tolerated), or
the split is drawn with ``--seed`` (same proportions, not the same cases). train + val -> imagesTr/labelsTr,
``splits_final.json`` fold 0 = {train, val}; test -> imagesTs/labelsTs; guidednet_protocol.json lists them.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path

from nnunet_ext.conversion.cases import VolumeCase
from nnunet_ext.conversion.cli import argument_type, converter_parser, run
from nnunet_ext.conversion.errors import MissingPartnerError, SourceLayoutError, SourceProblem
from nnunet_ext.conversion.images_masks import read_name_list
from nnunet_ext.conversion.splits import ProtocolSplit, parse_counts, random_partition
from nnunet_ext.conversion.writer import DatasetDescription, convert_dataset

TASKS = {
    1: {
        "id": 218,
        "name": "AMOS2022_postChallenge_task1",
        "channel": "CT",
        "max_id": {"training": 410, "validation": 409, "test": 500},
    },
    2: {"id": 219, "name": "AMOS2022_postChallenge_task2", "channel": "either_CT_or_MR", "max_id": None},
}
FOLDERS = {
    "training": ("imagesTr", "labelsTr", "Tr"),
    "validation": ("imagesVa", "labelsVa", "Tr"),
    "test": ("imagesTs", None, "Ts"),
}
GUIDEDNET_COUNTS = (180, 60, 60)
_CASE = re.compile(r"amos_\d+\.nii\.gz")
DESCRIPTION = (
    "AMOS 2022 as released after the challenge (with validation labels); validation cases merged into training "
    "for nnU-Net's 5-fold cross-validation, as nnU-Net's own Dataset218/219 converters do."
)
GUIDEDNET_NOTES = (
    "GuidedNet CT-only AMOS split (180/60/60 over the CT cases of training + validation); from its list files "
    "when --split-lists was given, else drawn with the seed. Fold 0 of splits_final.json = {train, val}."
)


def load_source_json(source: Path) -> dict:
    path = source / "dataset.json"
    if not path.is_file():
        raise SourceLayoutError(f"{path}: AMOS dataset.json not found")
    try:
        data = json.loads(path.read_text())
    except ValueError as error:
        raise SourceLayoutError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise SourceLayoutError(f"{path}: expected a JSON object, got {type(data).__name__}")
    missing = [key for key in ("training", "validation", "test", "labels") if key not in data]
    if missing:
        raise SourceLayoutError(f"{path}: lacks the keys {missing}")
    labels = data["labels"]
    if not isinstance(labels, dict) or not all(
        isinstance(key, str) and key.isdigit() and isinstance(name, str) for key, name in labels.items()
    ):
        raise SourceLayoutError(f'{path}: "labels" must map label values to names, e.g. {{"0": "background"}}')
    for key in FOLDERS:
        entries = data[key]
        if not isinstance(entries, list) or not all(_listed_image(entry) for entry in entries):
            raise SourceLayoutError(
                f'{path}: "{key}" must be a list of {{"image": "./{FOLDERS[key][0]}/amos_XXXX.nii.gz", ...}} entries'
            )
    return data


def _listed_image(entry: object) -> bool:
    """Whether a case entry of the release's dataset.json names an ``amos_XXXX.nii.gz`` image."""
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("image"), str)
        and _CASE.fullmatch(Path(entry["image"]).name) is not None
    )


def amos_cases(source: Path, data: dict, task: int) -> tuple[list[VolumeCase], list[SourceProblem]]:
    """The listed cases (task 1: CT ids only), validation merged into training."""
    allowed = frozenset(int(key) for key in data["labels"])
    limits = TASKS[task]["max_id"]
    cases, problems = [], []
    for key, (image_folder, label_folder, split) in FOLDERS.items():
        if label_folder and data[key] and not (source / label_folder).is_dir():
            raise SourceLayoutError(f"{source / label_folder}: not found (the post-challenge release has it)")
        for entry in data[key]:
            case_id = Path(entry["image"]).name[: -len(".nii.gz")]
            if limits is not None and int(case_id.split("_")[-1]) > limits[key]:
                continue
            image = source / image_folder / f"{case_id}.nii.gz"
            label = source / label_folder / f"{case_id}.nii.gz" if label_folder else None
            missing = [path for path in (image, label) if path is not None and not path.is_file()]
            problems += [MissingPartnerError(path, f"{case_id} is listed in dataset.json['{key}']") for path in missing]
            if not missing:
                cases.append(VolumeCase(case_id, split, image, label, allowed))
    return cases, problems


def guidednet_split(cases: Sequence[VolumeCase], lists: Path | None, counts: Sequence[int], seed: int) -> ProtocolSplit:
    labelled = sorted(case.case_id for case in cases if case.split == "Tr")
    if lists is None:
        return ProtocolSplit(*random_partition(labelled, counts, seed))
    roles = [read_name_list(lists / f"{role}.txt") for role in ("train", "val", "test")]
    unknown = sorted(set().union(*roles) - set(labelled))
    if unknown:
        raise SourceLayoutError(f"{lists}: lists cases that are not labelled CT cases of the source: {unknown[:10]}")
    return ProtocolSplit(*roles)


def convert_amos(
    source: Path,
    output_root: Path,
    dataset_id: int | None = None,
    name: str | None = None,
    task: int = 1,
    protocol: str = "nnunet",
    split_lists: Path | None = None,
    counts: Sequence[int] = GUIDEDNET_COUNTS,
    seed: int = 0,
    **options,
) -> Path:
    """Convert AMOS 2022 task ``task`` (``protocol``: nnunet, or guidednet for task 1); returns the dataset folder.

    ``options`` (``overwrite``, ``workers``, ``progress``) go to :func:`~nnunet_ext.conversion.writer.convert_dataset`.
    """
    if protocol == "guidednet" and task != 1:
        raise SourceLayoutError("the GuidedNet protocol is CT-only (task 1)")
    data = load_source_json(source)
    cases, problems = amos_cases(source, data, task)
    splits, extra = None, {}
    if protocol == "guidednet":
        split = guidednet_split(cases, split_lists, counts, seed)
        roles = {**dict.fromkeys(split.train + split.val, "Tr"), **dict.fromkeys(split.test, "Ts")}
        cases = [case for case in cases if case.case_id in roles]
        for case in cases:
            case.split = roles[case.case_id]
        splits = split.splits_final()
        extra["guidednet_protocol.json"] = split.to_json(
            "GuidedNet AMOS CT", GUIDEDNET_NOTES, None if split_lists else seed
        )
    metadata = {
        "dataset_name": name or TASKS[task]["name"],
        "reference": "https://amos22.grand-challenge.org/",
        "release": "https://zenodo.org/record/7262581",
        "overwrite_image_reader_writer": "NibabelIOWithReorient",
        "description": DESCRIPTION,
        "license": data.get("licence", data.get("license", "see the AMOS release")),
    }
    labels = {label_name: int(value) for value, label_name in data["labels"].items()}
    return convert_dataset(
        cases,
        DatasetDescription(name or TASKS[task]["name"], {0: TASKS[task]["channel"]}, labels, ".nii.gz", metadata),
        output_root,
        dataset_id or TASKS[task]["id"],
        splits=splits,
        extra_files=extra,
        input_root=source,
        case_map=False,
        known_problems=problems,
        **options,
    )


def build_parser(task: int) -> argparse.ArgumentParser:
    spec = TASKS[task]
    title = (
        f"AMOS 2022 task {task} -> Dataset{spec['id']:03d}_{spec['name']} ({'CT only' if task == 1 else 'CT + MRI'})."
    )
    parser = converter_parser(title, spec["id"], spec["name"], epilog=__doc__.split("\n", 2)[2])
    if task == 1:
        parser.add_argument("--protocol", choices=("nnunet", "guidednet"), default="nnunet", help="(see below)")
        parser.add_argument("--split-lists", type=Path, default=None, help="guidednet: folder with train/val/test.txt")
        parser.add_argument(
            "--counts", type=argument_type(parse_counts), default=GUIDEDNET_COUNTS, help="guidednet: train,val,test"
        )
        parser.add_argument("--seed", type=int, default=0, help="guidednet without --split-lists: split seed")
    return parser


def main(argv: Sequence[str] | None = None, task: int = 1) -> int:
    def convert(args: argparse.Namespace, common: dict) -> Path:
        options = {}
        if task == 1:
            options = {
                "protocol": args.protocol,
                "split_lists": args.split_lists,
                "counts": args.counts,
                "seed": args.seed,
            }
        return convert_amos(task=task, **options, **common)

    return run(build_parser(task), convert, argv)
