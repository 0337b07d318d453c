"""``nnUNetv2_ext_compare``: the cross-validation results of several trainers in one table and one plot."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.file_path_utilities import get_output_folder

from nnunet_ext.cli.evaluate import add_metric_arguments
from nnunet_ext.command_line import exit_on_user_error, print_warnings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_ext_compare",
        description="Collect the cross-validation results of several trainers: nnU-Net's fold_X/validation/"
        "summary.json (Dice, IoU) plus the extended metrics of the validation predictions, computed against "
        "$nnUNet_preprocessed/DatasetXXX/gt_segmentations on first use and cached in each validation folder "
        "(summary_ext_PROTOCOL.json). With the nnunet protocol, Dice and IoU (nnU-Net's own) come from summary.json "
        "only unless --metrics names them. Writes compare.md, compare.csv, compare.json and compare.png, and from the "
        "logging in each fold's checkpoint_final.pth (else checkpoint_latest.pth) learning curves (validation "
        "pseudo-Dice, train and validation loss against epoch and wall-clock time) in learning_curves.png with a "
        "table of seconds per iteration, training time and best pseudo-Dice.",
    )
    parser.add_argument("-d", required=True, help="dataset name or ID")
    parser.add_argument("-c", required=True, help="configuration, e.g. 2d or 3d_fullres")
    parser.add_argument("-tr", nargs="+", required=True, help="trainer class names to compare")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier. Default: nnUNetPlans")
    parser.add_argument(
        "-f",
        nargs="+",
        type=int,
        default=None,
        help="folds to use (each must have a finished validation). Default: every fold with one, per trainer",
    )
    parser.add_argument(
        "-o",
        default=None,
        help="output folder: new, empty, or holding an earlier comparison, whose files are replaced (other files "
        "stay). "
        "Default: $nnUNet_results/DatasetXXX/ext_compare__PLANS__CONFIGURATION",
    )
    parser.add_argument(
        "--recompute", action="store_true", help="compute the extended metrics again even if a valid cache exists"
    )
    add_metric_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from nnunet_ext.evaluation.crossval import compare_trainers  # imports torch: after parsing, so --help is fast
    from nnunet_ext.evaluation.folders import EvaluationWarning
    from nnunet_ext.evaluation.reports import COMPARISON_JSON, check_report_folder, write_comparison_report

    with exit_on_user_error("nnUNetv2_ext_compare"), print_warnings("nnUNetv2_ext_compare", EvaluationWarning):
        if nnUNet_results is None or nnUNet_preprocessed is None:
            raise RuntimeError("set nnUNet_results and nnUNet_preprocessed (nnU-Net's set_environment_variables.md)")
        dataset_name = maybe_convert_to_dataset_name(args.d)
        output = Path(args.o or os.path.join(nnUNet_results, dataset_name, f"ext_compare__{args.p}__{args.c}"))
        check_report_folder(output, COMPARISON_JSON)
        trainer_folders = {trainer: get_output_folder(dataset_name, trainer, args.p, args.c) for trainer in args.tr}
        summaries, columns, header = compare_trainers(
            trainer_folders,
            os.path.join(nnUNet_preprocessed, dataset_name, "gt_segmentations"),
            args.protocol,
            args.metrics,
            args.nsd_tolerance,
            args.f,
            args.np,
            args.recompute,
        )
        header = {"dataset": dataset_name, "configuration": args.c, "plans": args.p, **header}
        output = write_comparison_report(summaries, columns, header, output)
    print((output / "compare.md").read_text())
    print(f"comparison written to {output}")


if __name__ == "__main__":
    main()
