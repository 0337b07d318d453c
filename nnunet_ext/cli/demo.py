"""``nnUNetv2_ext_demo``: dataset -> plan/preprocess -> train one of our trainers -> predict -> Dice.

The dataset is synthetic (generated) or ``mni152``, the real tissue slices of the ICBM152 template in nilearn's wheel
(:mod:`nnunet_ext.conversion.mni152`: its test slab is spatially separated from the training slices).

Everything happens inside ``--workdir`` (its own ``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``), so the
demo never touches a user's nnU-Net folders. It uses the same nnU-Net functions the ``nnUNetv2_*`` commands call.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from nnunet_ext.command_line import HelpFormatter, exit_on_user_error, fail

PROG = "nnUNetv2_ext_demo"
MARKER = ".nnunet_ext_demo"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Generate a small synthetic 2D dataset (3 foreground classes) or convert the MNI152 template's "
        "grey/white-matter slices (--dataset mni152), plan and preprocess it with nnU-Net, train an nnunet_ext "
        "trainer on a shortened schedule (fold 0), predict the held-out test cases and print their per-class Dice. "
        "A few minutes on a 2-core CPU with the defaults.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("nnunet_ext_demo"),
        help="folder for all demo data; re-created on every run (only if it is a demo folder)",
    )
    parser.add_argument("-tr", "--trainer", default="nnUNetTrainerCMUNeXt", help="trainer to train")
    parser.add_argument(
        "--dataset",
        choices=["synthetic", "mni152"],
        default="synthetic",
        help="synthetic: generated shapes (the options below); mni152: 2 mm axial tissue slices of the ICBM152 "
        'template shipped with nilearn (needs the mni152 extra: pip install "nnunet_ext[mni152]"), 52 training '
        "and 14 test slices",
    )
    parser.add_argument("-d", "--dataset-id", type=int, default=990, help="dataset id given to the demo dataset")
    parser.add_argument(
        "--num-training", type=int, default=24, help="synthetic: training cases (5-fold split; fold 0 trained)"
    )
    parser.add_argument("--num-test", type=int, default=6, help="synthetic: held-out test cases predicted and scored")
    parser.add_argument("--size", type=int, default=96, help="synthetic: image edge length in pixels")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs (nnU-Net default: 1000)")
    parser.add_argument("--iterations", type=int, default=25, help="iterations per epoch (nnU-Net default: 250)")
    parser.add_argument(
        "--val-iterations", type=int, default=5, help="validation iterations per epoch (nnU-Net default: 50)"
    )
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto = cuda when available, else cpu"
    )
    parser.add_argument(
        "-np",
        "--num-processes",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes for preprocessing, data augmentation and evaluation",
    )
    parser.add_argument("--seed", type=int, default=0, help="synthetic: seed of the dataset")
    return parser


def prepare_workdir(workdir: Path) -> dict[str, str]:
    """(Re-)create ``workdir`` and return the nnU-Net environment pointing into it.

    Refuses to clear a non-empty folder that a previous demo did not create.
    """
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / MARKER).is_file():
            fail(PROG, f"{workdir} is not empty and not a demo folder; choose another --workdir")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("created by nnUNetv2_ext_demo; deleted and re-created on every demo run\n")
    environment = {}
    for name in ("raw", "preprocessed", "results"):
        (workdir / name).mkdir()
        environment[f"nnUNet_{name}"] = str((workdir / name).resolve())
    return environment


def dice_table(summary: dict, labels: dict[str, int]) -> str:
    """Per-class Dice/IoU table (markdown) from an nnU-Net ``summary.json`` dict; ``labels``: name -> value."""
    names = {value: name for name, value in labels.items()}
    lines = ["| class | Dice | IoU |", "|---|---|---|"]
    for label, metrics in sorted(summary["mean"].items(), key=lambda item: int(item[0])):
        lines.append(f"| {names.get(int(label), label)} ({label}) | {metrics['Dice']:.3f} | {metrics['IoU']:.3f} |")
    lines.append(
        f"| foreground mean | {summary['foreground_mean']['Dice']:.3f} | {summary['foreground_mean']['IoU']:.3f} |"
    )
    return "\n".join(lines)


def write_demo_dataset(args: argparse.Namespace) -> tuple[Path, dict[str, int], str, object]:
    """Write the demo dataset into ``$nnUNet_raw``: its folder, labels (name -> value), file ending and nnU-Net image
    reader/writer (for scoring the predictions)."""
    raw_root = Path(os.environ["nnUNet_raw"])
    if args.dataset == "mni152":
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

        from nnunet_ext.conversion.errors import ConversionError
        from nnunet_ext.conversion.mni152 import LABELS, convert_mni152

        with exit_on_user_error(PROG, (ConversionError,)):
            raw = convert_mni152(None, raw_root, dataset_id=args.dataset_id, name="DemoMNI152", progress=False)
        return raw, LABELS, ".nii.gz", SimpleITKIO()
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    from nnunet_ext.data.synthetic import LABELS, SyntheticDatasetSpec, generate_synthetic_dataset

    spec = SyntheticDatasetSpec(
        dataset_id=args.dataset_id,
        name="Demo",
        shape=(args.size, args.size),
        num_training=args.num_training,
        num_test=args.num_test,
        seed=args.seed,
    )
    return generate_synthetic_dataset(spec, raw_root), LABELS, spec.file_ending, NaturalImage2DIO()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    with exit_on_user_error(PROG, (OSError,)):
        os.environ.update(prepare_workdir(args.workdir))
    os.environ.update(
        {
            "nnUNet_ext_num_epochs": str(args.epochs),
            "nnUNet_ext_num_iterations_per_epoch": str(args.iterations),
            "nnUNet_ext_num_val_iterations_per_epoch": str(args.val_iterations),
        }
    )
    os.environ.setdefault("nnUNet_def_n_proc", str(max(1, args.num_processes)))
    os.environ.setdefault("nnUNet_n_proc_DA", str(args.num_processes))

    import torch
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.run.run_training import run_training
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    device_name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device_name == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device(device_name)
    workers = max(1, args.num_processes)

    def step(message: str) -> None:
        print(f"\n[nnUNetv2_ext_demo {time.perf_counter() - started:6.0f} s] {message}", flush=True)

    step(f"1/5 writing the {args.dataset} dataset {args.dataset_id} into {os.environ['nnUNet_raw']}")
    raw, labels, file_ending, reader_writer = write_demo_dataset(args)

    step("2/5 nnU-Net fingerprint, plans and 2d preprocessing")
    extract_fingerprints([args.dataset_id], num_processes=workers, check_dataset_integrity=True)
    plan_experiments([args.dataset_id])
    preprocess([args.dataset_id], configurations=("2d",), num_processes=(workers,))

    step(f"3/5 training {args.trainer}, fold 0, {args.epochs} epochs x {args.iterations} iterations on {device_name}")
    run_training(str(args.dataset_id), "2d", 0, args.trainer, device=device)

    step("4/5 predicting the held-out test cases")
    model_folder = get_output_folder(args.dataset_id, args.trainer, "nnUNetPlans", "2d")
    predictor = nnUNetPredictor(device=device, perform_everything_on_device=device_name == "cuda", verbose=False)
    predictor.initialize_from_trained_model_folder(model_folder, use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    predictions = args.workdir.resolve() / "predictions"
    predictions.mkdir()
    predictor.predict_from_files_sequential(str(raw / "imagesTs"), str(predictions), save_probabilities=False)

    step("5/5 evaluating against labelsTs")
    summary = compute_metrics_on_folder(
        str(raw / "labelsTs"),
        str(predictions),
        str(predictions / "summary.json"),
        reader_writer,
        file_ending,
        [value for value in labels.values() if value > 0],
        num_processes=workers,
    )
    print(
        f"\n{args.trainer} on {len(summary['metric_per_case'])} held-out {args.dataset} cases "
        f"({args.epochs} x {args.iterations} iterations, {time.perf_counter() - started:.0f} s in total):\n"
    )
    print(dice_table(summary, labels))
    print(f"\nmodel: {model_folder}\npredictions and summary.json: {predictions}")


if __name__ == "__main__":
    sys.exit(main())
