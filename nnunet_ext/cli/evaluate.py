"""``nnUNetv2_ext_evaluate``: Dice, IoU, HD95, ASSD and NSD of a folder of predictions, under a paper's protocol."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from nnunetv2.configuration import default_num_processes

from nnunet_ext.command_line import exit_on_user_error, print_warnings
from nnunet_ext.evaluation.metrics import METRICS
from nnunet_ext.evaluation.protocols import PROTOCOLS

# the evaluation itself (nnU-Net's readers, which import torch) is imported after parsing: --help answers at once

PROG = "nnUNetv2_ext_evaluate"


def metric_list(text: str) -> list[str]:
    """``"dice,hd95"`` -> ``["dice", "hd95"]`` (argparse type)."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown metric(s) {', '.join(unknown)}; choose from {','.join(METRICS)}")
    return names


def add_metric_arguments(parser: argparse.ArgumentParser) -> None:
    """The options shared with ``nnUNetv2_ext_compare``: protocol, metrics, NSD tolerances, processes."""
    protocols = " ".join(f"{p.name}: {p.summary}" for p in PROTOCOLS.values())
    parser.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        default="nnunet",
        help=f"evaluation rules (units, HD95 convention, empty masks, NSD tolerances). {protocols} Default: nnunet.",
    )
    parser.add_argument(
        "--metrics",
        type=metric_list,
        default=None,
        help=f"comma-separated subset of {','.join(METRICS)}. Default: the protocol's "
        f"({'; '.join(f'{p.name}: ' + ','.join(p.default_metrics) for p in PROTOCOLS.values())}).",
    )
    parser.add_argument(
        "--nsd-tolerance",
        nargs="+",
        default=[],
        metavar="[CLASS=]T",
        help="NSD tolerance in the protocol's unit (mm; voxels for transunet-synapse): a number for every class "
        "and/or CLASS=T with CLASS a label name, label value or region such as '(1, 2)'. Default: the protocol's "
        "(FLARE22 organ table for flare, 1 otherwise).",
    )
    parser.add_argument(
        "-np",
        type=int,
        default=default_num_processes,
        help=f"worker processes; 0 evaluates in this process. Default: {default_num_processes} (nnUNet_def_n_proc).",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Per case and per class Dice, IoU, HD95, ASSD and NSD (spacing-aware, 2D and 3D) of predicted "
        "segmentations, with an explicit empty-mask policy per protocol. Writes metrics.json (nnU-Net summary.json "
        "layout), metrics_per_case.csv, summary.md and a box plot per metric.",
    )
    parser.add_argument("-ref", required=True, help="folder with the reference segmentations (e.g. labelsTr)")
    parser.add_argument("-pred", required=True, help="folder with the predicted segmentations (same file names)")
    parser.add_argument(
        "-djfile",
        default=None,
        help="dataset.json giving labels/regions, ignore label, file ending and reader. Default: PRED/dataset.json "
        "(written by nnUNetv2_predict), else REF/../dataset.json, else the labels found in the references.",
    )
    parser.add_argument(
        "-o",
        default=None,
        help="output folder: new, empty, or holding an earlier report, whose files are replaced (other files stay). "
        "Default: PRED/ext_evaluation_PROTOCOL",
    )
    parser.add_argument(
        "--chill",
        action="store_true",
        help="evaluate the cases that have both files: references without a prediction and predictions without a "
        "reference (named in a warning) are left out",
    )
    add_metric_arguments(parser)
    return parser


def find_dataset_json(djfile: str | None, prediction_folder: Path, reference_folder: Path) -> dict | None:
    """``-djfile``, else ``PRED/dataset.json``, else ``REF/../dataset.json`` (read and checked), else None.

    Raises:
        FileNotFoundError: ``-djfile`` does not exist.
        ValueError: the file is not JSON, or lacks nnU-Net's ``labels`` or ``file_ending``; naming the file.
    """
    if djfile is not None:
        if not Path(djfile).is_file():
            raise FileNotFoundError(f"dataset.json {djfile} not found")
        return read_dataset_json(Path(djfile))
    for candidate in (prediction_folder / "dataset.json", reference_folder.parent / "dataset.json"):
        if candidate.is_file():
            print(f"using {candidate}")
            return read_dataset_json(candidate)
    return None


def read_dataset_json(path: Path) -> dict:
    """An nnU-Net ``dataset.json`` with ``labels`` and ``file_ending``; a ValueError names the file otherwise."""
    try:
        dataset_json = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(dataset_json, dict) or not isinstance(dataset_json.get("labels"), dict):
        raise ValueError(f'{path}: not an nnU-Net dataset.json (no "labels" table)')
    if not isinstance(dataset_json.get("file_ending"), str):
        raise ValueError(f'{path}: not an nnU-Net dataset.json (no "file_ending")')
    return dataset_json


def guess_file_ending(folder: Path) -> str:
    """The nnU-Net file ending most files in ``folder`` have (longest match: ``.nii.gz`` before ``.gz``)."""
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES

    endings = {ending for io_class in LIST_OF_IO_CLASSES for ending in io_class.supported_file_endings}
    found = Counter(
        max((e for e in endings if p.name.lower().endswith(e)), key=len, default=None) for p in folder.iterdir()
    )
    found.pop(None, None)
    if not found:
        raise FileNotFoundError(f"no segmentation files nnU-Net can read in {folder}")
    return found.most_common(1)[0][0]


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from nnunet_ext.evaluation.folders import (
        CaseWorkers,
        ClassSet,
        EvaluationSettings,
        EvaluationWarning,
        evaluate_folder,
        find_reader,
        labels_in_folder,
    )
    from nnunet_ext.evaluation.reports import EVALUATION_JSON, check_report_folder, write_evaluation_report

    reference_folder, prediction_folder = Path(args.ref), Path(args.pred)
    with exit_on_user_error(PROG), print_warnings(PROG, EvaluationWarning):
        for folder in (reference_folder, prediction_folder):
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder} is not a folder")
        dataset_json = find_dataset_json(args.djfile, prediction_folder, reference_folder)
        file_ending = dataset_json["file_ending"] if dataset_json else guess_file_ending(reference_folder)
        references = sorted(p for p in reference_folder.iterdir() if p.name.endswith(file_ending))
        if not references:
            raise FileNotFoundError(f"no references ending in {file_ending} in {reference_folder}")
        reader = find_reader(file_ending, references[0], dataset_json)
        if dataset_json is not None:
            classes = ClassSet.from_dataset_json(dataset_json)
        else:
            classes = ClassSet.from_labels(labels_in_folder(reader, references))
        settings = EvaluationSettings.create(args.protocol, args.metrics, classes, args.nsd_tolerance)
        output = Path(args.o) if args.o else prediction_folder / f"ext_evaluation_{args.protocol}"
        check_report_folder(output, EVALUATION_JSON)
        with CaseWorkers(args.np) as workers:
            summary = evaluate_folder(
                reference_folder, prediction_folder, reader, file_ending, classes, settings, workers, args.chill
            )
        write_evaluation_report(summary, output)
    print((output / "summary.md").read_text())
    print(f"report written to {output}")


if __name__ == "__main__":
    main()
