"""FLARE22 (abdominal CT: 50 labelled + 2000 unlabelled training cases) -> ``Dataset022_FLARE22``.

Layout (--input is FLARE2022/, the folder holding Training/ and Tuning/)::

    Training/FLARE22_LabeledCase50/images/FLARE22_Tr_0001_0000.nii.gz   labels/FLARE22_Tr_0001.nii.gz
    Training/FLARE22_UnlabeledCase1-1000/Case_00001_0000.nii.gz ...     (and FLARE22_UnlabeledCase1001-2000/)
    Tuning/images/FLARETs_0001_0000.nii.gz                              Tuning/labels/FLARETs_0001.nii.gz
    Testing/FLARETs_0001_0000.nii.gz ...                                (no labels)

``--protocol full`` (default): labelled training and labelled tuning cases -> imagesTr/labelsTr, unlabelled
cases -> imagesUl/ (nnU-Net image naming, kept as they are), Testing -> imagesTs. Tuning cases are renamed
``FLARETune_0001`` because Testing uses the same ``FLARETs_`` names; ``case_ids.csv`` maps every case id to its
files. Files are copied unchanged; labels 1 liver, 2 right kidney, 3 spleen, 4 pancreas, 5 aorta, 6 IVC,
7 right adrenal, 8 left adrenal, 9 gallbladder, 10 esophagus, 11 stomach, 12 duodenum, 13 left kidney.

``--protocol guidednet``: GuidedNet's 10 % setting (42 labelled + 378 unlabelled training cases, 14 val,
14 test from 70 labelled cases). GuidedNet's case lists use its own ids (train_000...) that cannot be mapped
to FLARE names, and the 70 labelled cases are presumably the 50 training + 20 labelled tuning cases (unverified):
this converter takes the labelled training cases then the tuning cases in name order, the first 70, shuffles
them with --seed into 42/14/14 (--counts), and the first 378 (--unlabeled-count) unlabelled cases in name order.
train + val -> imagesTr/labelsTr with splits_final.json fold 0 = {train: the 42, val: the 14}; test ->
imagesTs/labelsTs; the 378 -> imagesUl/; Testing is left out; guidednet_protocol.json lists every role.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from nnunet_ext.conversion.cases import Case, VolumeCase
from nnunet_ext.conversion.cli import argument_type, converter_parser, run
from nnunet_ext.conversion.errors import MissingPartnerError, SourceLayoutError, SourceProblem
from nnunet_ext.conversion.splits import ProtocolSplit, parse_counts, random_partition
from nnunet_ext.conversion.writer import DatasetDescription, convert_dataset

DATASET_ID, NAME = 22, "FLARE22"
ORGANS = (
    "liver",
    "right_kidney",
    "spleen",
    "pancreas",
    "aorta",
    "inferior_vena_cava",
    "right_adrenal_gland",
    "left_adrenal_gland",
    "gallbladder",
    "esophagus",
    "stomach",
    "duodenum",
    "left_kidney",
)
LABELS = {"background": 0, **{organ: index for index, organ in enumerate(ORGANS, start=1)}}
IMAGE_SUFFIX = "_0000.nii.gz"
GUIDEDNET_COUNTS, GUIDEDNET_UNLABELED = (42, 14, 14), 378
METADATA = {"reference": "https://flare22.grand-challenge.org/"}
GUIDEDNET_NOTES = (
    "GuidedNet 10% FLARE22 setting re-created: GuidedNet's own case ids (train_000...) cannot be mapped to FLARE "
    "names; labelled pool = labelled training then tuning cases in name order (first train+val+test of them), "
    "shuffled with the seed; unlabelled = the first cases of the unlabelled pool in name order. Fold 0 of "
    "splits_final.json trains on 'train' only (all labelled) and validates on 'val'; imagesUl/ is the pool."
)


def _case_name(image: Path) -> str:
    if not image.name.endswith(IMAGE_SUFFIX):
        raise SourceLayoutError(f"{image}: expected nnU-Net image naming <case>{IMAGE_SUFFIX}")
    return image.name[: -len(IMAGE_SUFFIX)]


def _labelled(images: Path, labels: Path, rename) -> tuple[list[VolumeCase], list[SourceProblem]]:
    if not images.is_dir() or not labels.is_dir():
        raise SourceLayoutError(f"{images} and {labels}: both folders are needed")
    allowed = frozenset(LABELS.values())
    cases, problems = [], []
    names = {_case_name(image): image for image in sorted(images.glob(f"*{IMAGE_SUFFIX}"))}
    for name, image in names.items():
        label = labels / f"{name}.nii.gz"
        if label.is_file():
            cases.append(VolumeCase(rename(name), "Tr", image, label, allowed))
        else:
            problems.append(MissingPartnerError(image, f"no label {label.name} in {labels}"))
    for label in sorted(labels.glob("*.nii.gz")):
        if label.name[: -len(".nii.gz")] not in names:
            problems.append(MissingPartnerError(label, f"no image {label.name[:-7]}{IMAGE_SUFFIX} in {images}"))
    return cases, problems


def flare_cases(source: Path) -> tuple[list[VolumeCase], list[VolumeCase], list[VolumeCase], list[SourceProblem]]:
    """(labelled, unlabelled, testing) cases, labelled = training then tuning; unlabelled/testing in name order."""
    training = source / "Training"
    if not training.is_dir():
        raise SourceLayoutError(f"{source}: no Training/ folder")
    labelled, problems = _labelled(
        training / "FLARE22_LabeledCase50" / "images", training / "FLARE22_LabeledCase50" / "labels", str
    )
    if (source / "Tuning").is_dir():
        tuning, tuning_problems = _labelled(
            source / "Tuning" / "images", source / "Tuning" / "labels", lambda n: n.replace("FLARETs_", "FLARETune_")
        )
        labelled, problems = labelled + tuning, problems + tuning_problems
    unlabelled_images = sorted(training.glob(f"FLARE22_UnlabeledCase*/*{IMAGE_SUFFIX}"), key=lambda p: p.name)
    unlabelled = [VolumeCase(_case_name(image), "Ul", image) for image in unlabelled_images]
    testing = [
        VolumeCase(_case_name(image), "Ts", image) for image in sorted((source / "Testing").glob(f"*{IMAGE_SUFFIX}"))
    ]
    return labelled, unlabelled, testing, problems


def convert_flare(
    source: Path,
    output_root: Path,
    dataset_id: int = DATASET_ID,
    name: str = NAME,
    protocol: str = "full",
    include_unlabeled: bool = True,
    counts: Sequence[int] = GUIDEDNET_COUNTS,
    unlabeled_count: int = GUIDEDNET_UNLABELED,
    seed: int = 0,
    **options,
) -> Path:
    """Convert FLARE22 (``protocol``: full or guidednet); returns the dataset folder.

    ``options`` (``overwrite``, ``workers``, ``progress``) go to :func:`~nnunet_ext.conversion.writer.convert_dataset`.
    """
    labelled, unlabelled, testing, problems = flare_cases(source)
    splits, extra = None, {}
    if protocol == "full":
        cases: list[Case] = [*labelled, *(unlabelled if include_unlabeled else []), *testing]
    else:
        train, val, test = random_partition([case.case_id for case in labelled], counts, seed)
        if len(unlabelled) < unlabeled_count:
            raise SourceLayoutError(f"the protocol needs {unlabeled_count} unlabelled cases, found {len(unlabelled)}")
        pool = unlabelled[:unlabeled_count]
        for case in labelled:
            case.split = "Ts" if case.case_id in test else "Tr"
        cases = [c for c in labelled if c.case_id in {*train, *val, *test}] + pool
        split = ProtocolSplit(train, val, test, [case.case_id for case in pool])
        splits = split.splits_final()
        extra["guidednet_protocol.json"] = split.to_json("GuidedNet FLARE22", GUIDEDNET_NOTES, seed)
    return convert_dataset(
        cases,
        DatasetDescription(name, {0: "CT"}, dict(LABELS), ".nii.gz", dict(METADATA)),
        output_root,
        dataset_id,
        splits=splits,
        extra_files=extra,
        input_root=source,
        known_problems=problems,
        **options,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = converter_parser(__doc__.splitlines()[0], DATASET_ID, NAME, epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--protocol", choices=("full", "guidednet"), default="full", help="what to convert (below)")
    parser.add_argument("--no-unlabeled", action="store_true", help="full: do not copy the unlabelled cases")
    parser.add_argument(
        "--counts",
        type=argument_type(parse_counts),
        default=GUIDEDNET_COUNTS,
        help="guidednet: labelled train,val,test counts",
    )
    parser.add_argument(
        "--unlabeled-count", type=int, default=GUIDEDNET_UNLABELED, help="guidednet: unlabelled cases to imagesUl/"
    )
    parser.add_argument("--seed", type=int, default=0, help="guidednet: shuffle seed of the labelled cases")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(
        build_parser(),
        lambda args, common: convert_flare(
            protocol=args.protocol,
            include_unlabeled=not args.no_unlabeled,
            counts=args.counts,
            unlabeled_count=args.unlabeled_count,
            seed=args.seed,
            **common,
        ),
        argv,
    )
