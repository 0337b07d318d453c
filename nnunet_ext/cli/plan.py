"""``nnUNetv2_ext_plan``: plans whose batch and patch fit a trainer's training memory."""

from __future__ import annotations

import argparse

from nnunet_ext.command_line import HelpFormatter, exit_on_user_error

PROG = "nnUNetv2_ext_plan"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Start from a dataset's plans (default nnUNetPlans, as nnUNetv2_plan_and_preprocess wrote them) "
        "and write plans with their own identifier whose batch size, and where batch 2 does not fit, patch size "
        "(shrunk the way nnU-Net's planner shrinks it) keep TRAINER's estimated training peak (float16 mixed "
        "precision, deep supervision, every network and head the trainer trains, labeled and unlabeled halves) "
        "within the memory target. nnU-Net's limits stay: batch >= 2, a batch covers <= 5%% of the dataset's "
        "voxels. The memory is estimated on the CPU by running one train step of the trainer on fake tensors "
        "(seconds to minutes per estimate, no GPU needed). The new plans reuse the preprocessed data of the source "
        "plans. Train with: nnUNetv2_train ID CONFIGURATION FOLD -tr TRAINER -p NAME. The same planning runs inside "
        "nnUNetv2_plan_experiment -pl ExtPlanner_TRAINER.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-d", required=True, help="dataset ID or name (DatasetXXX_Name)")
    parser.add_argument("-tr", required=True, help="trainer class name, e.g. nnUNetTrainerGCGLE")
    parser.add_argument(
        "-c",
        nargs="+",
        default=None,
        help="configurations to fit, e.g. 2d 3d_fullres (default: every configuration of the source plans with its "
        "own patch that the trainer can build; the others are copied unchanged)",
    )
    parser.add_argument(
        "-gpu_memory_target",
        type=float,
        default=8.0,
        help="GPU memory, in GB, the training peak must fit (nnU-Net's default planner: 8)",
    )
    parser.add_argument(
        "-overwrite_plans_name",
        default=None,
        help="identifier of the written plans (default: nnUNetPlans_<trainer>_<target>G, e.g. nnUNetPlans_GCGLE_8G)",
    )
    parser.add_argument("-p", default="nnUNetPlans", help="identifier of the source plans")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from nnunet_ext.planning.plans import plan_for_trainer  # imports torch: after parsing, so --help is fast

    with exit_on_user_error(PROG):
        plans_file, table, command = plan_for_trainer(
            args.d, args.tr, args.c, args.gpu_memory_target, args.overwrite_plans_name, args.p
        )
    print(table)
    print(f"wrote {plans_file}")
    print(f"train with: {command}")
