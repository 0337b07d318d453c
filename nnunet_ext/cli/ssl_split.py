"""``nnUNetv2_ext_ssl_split``: per fold, which training cases keep their labels (``splits_ssl.json``)."""

from __future__ import annotations

import argparse
import sys

from nnunet_ext.command_line import HelpFormatter, exit_on_user_error

PROG = "nnUNetv2_ext_ssl_split"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Derive a semi-supervised split from nnU-Net's splits_final.json (created as nnU-Net would if "
        "missing): per fold, a labeled subset of the fold's training cases; the fold's other training cases join "
        "the unlabeled pool (their labels are never read); validation cases never enter a pool. Every class "
        "appears in each labeled subset when possible (a warning names those that cannot). Written to "
        "$nnUNet_preprocessed/DatasetXXX/splits_ssl.json and used by the semi-supervised trainers.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-d", "--dataset", required=True, help="dataset ID or name (DatasetXXX_Name)")
    amount = parser.add_mutually_exclusive_group(required=True)
    amount.add_argument(
        "--labeled-fraction", type=float, help="share of each fold's training cases kept labeled, in (0, 1]"
    )
    amount.add_argument("--labeled-count", type=int, help="number of each fold's training cases kept labeled")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same split)")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans whose preprocessed data give the classes")
    parser.add_argument(
        "-c",
        "--configuration",
        default=None,
        help="configuration whose preprocessed data give the classes (None: the first preprocessed one)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing splits_ssl.json")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from nnunet_ext.ssl.splits import create_ssl_split_file  # imports torch: after parsing, so --help is fast

    with exit_on_user_error(PROG):
        path, content, warnings = create_ssl_split_file(
            args.dataset,
            args.labeled_fraction,
            args.labeled_count,
            args.seed,
            args.plans,
            args.configuration,
            args.overwrite,
        )
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    for fold, entry in enumerate(content["folds"]):
        print(
            f"fold {fold}: {len(entry['labeled'])} labeled, {len(entry['unlabeled'])} unlabeled, "
            f"{len(entry['val'])} validation cases"
        )
    print(f"written: {path}")


if __name__ == "__main__":
    main()
