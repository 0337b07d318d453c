"""``nnUNetv2_ext_preprocess_unlabeled``: preprocess the unlabeled pool (imagesUl/, imagesSynth/) with the plans."""

from __future__ import annotations

import argparse
from pathlib import Path

from nnunetv2.configuration import default_num_processes
from nnunetv2.paths import nnUNet_raw
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

from nnunet_ext.command_line import HelpFormatter, exit_on_user_error, fail
from nnunet_ext.ssl.layout import POOL_RAW_FOLDERS

PROG = "nnUNetv2_ext_preprocess_unlabeled"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Preprocess the unlabeled images of a dataset -- imagesUl/ (pool 'real') and imagesSynth/ "
        "(pool 'synthetic') beside imagesTr/, named like nnU-Net images ({case}_{XXXX}{file_ending}) -- with the "
        "dataset's own plans (same normalisation, spacing and cropping as the labeled cases) into "
        "$nnUNet_preprocessed/DatasetXXX/{data_identifier}_unlabeled/{pool}/, for the semi-supervised trainers. "
        "Re-running is incremental: cases already done are skipped, cases whose image was removed are deleted. "
        "Every case is validated (naming, file ending, channels, readable, geometry); invalid cases are listed "
        "with their files and not written, and the command then exits with status 2.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-d", "--dataset", required=True, help="dataset ID or name (DatasetXXX_Name)")
    parser.add_argument(
        "-c", "--configurations", nargs="+", required=True, help="configuration(s) of the plans, e.g. 2d 3d_fullres"
    )
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier")
    parser.add_argument(
        "--pool",
        choices=[*POOL_RAW_FOLDERS, "all"],
        default="all",
        help="which pool: real (imagesUl/), synthetic (imagesSynth/), or all pools whose raw folder exists",
    )
    parser.add_argument(
        "-np",
        "--num-processes",
        type=int,
        default=default_num_processes,
        help="spawned worker processes (0: sequential in this process); the default is nnUNet_def_n_proc, else 8",
    )
    parser.add_argument("--overwrite", action="store_true", help="preprocess every case again (also after new plans)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from nnunet_ext.ssl.preprocessing import preprocess_pool  # imports torch: after parsing, so --help is fast

    if args.num_processes < 0:
        fail(PROG, "-np must be >= 0")
    with exit_on_user_error(PROG):
        dataset_name = maybe_convert_to_dataset_name(args.dataset)
        pools = _pools(dataset_name, args.pool)
        failed = False
        for configuration in args.configurations:
            for pool in pools:
                report = preprocess_pool(
                    dataset_name, configuration, args.plans, pool, args.num_processes, args.overwrite
                )
                print(f"[{configuration}] {report.summary()}")
                failed |= bool(report.failed)
    if failed:
        fail(PROG, "some cases failed validation (listed above) and were not preprocessed")


def _pools(dataset_name: str, pool: str) -> list[str]:
    if pool != "all":
        return [pool]
    raw_dataset = Path(nnUNet_raw.require()) / dataset_name
    present = [name for name, folder in POOL_RAW_FOLDERS.items() if (raw_dataset / folder).is_dir()]
    if not present:
        folders = " or ".join(POOL_RAW_FOLDERS.values())
        raise FileNotFoundError(f"{raw_dataset} has no {folders} folder: nothing to preprocess")
    return present


if __name__ == "__main__":
    main()
