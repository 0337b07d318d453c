"""Compiled float16 training on a GPU, as nnU-Net runs it there: ``python -m nnunet_ext.benchmark.gpu_steps``.

For each 2D trainer (default: nnU-Net's ``nnUNetTrainer`` and every registered trainer that builds a 2D network) on
an ACDC-like 2D plan (the ``2d_acdc`` preset: patch 256x224, batch 14, 1 channel, 4 classes), the trainer is
built and initialised as ``nnUNetv2_train`` builds it on CUDA (its networks compiled unless ``nnUNet_compile`` says
otherwise, float16 autocast with a GradScaler in its own ``train_step``), then it runs ``--steps`` train steps and one
sliding-window prediction of a ``--slices``-slice case with nnU-Net's predictor. Printed per trainer: first step
seconds (compilation), median step ms of the others, peak VRAM of training, prediction seconds. Needs CUDA; not part
of the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics

from nnunet_ext.command_line import HelpFormatter, fail

PROGRAM = "python -m nnunet_ext.benchmark.gpu_steps"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("-tr", "--trainers", nargs="+", help="trainer names (default: every 2D trainer)")
    parser.add_argument("--preset", default="2d_acdc", help="benchmark preset of the plan (default: 2d_acdc)")
    parser.add_argument("--steps", type=int, default=20, help="train steps per trainer, the first one compiles")
    parser.add_argument("--slices", type=int, default=10, help="slices of the predicted case")
    return parser


def measure_on_gpu(trainer_name: str, preset: str, steps: int, slices: int) -> str:
    """One table row: build, ``steps`` train steps, one prediction, on ``cuda:0``."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_ext.benchmark.presets import setting_from_preset
    from nnunet_ext.benchmark.trainer_step import benchmark_dataset_json, initialised_trainer, trainer_train_step
    from nnunet_ext.timing import call_seconds

    setting = setting_from_preset(preset)
    device = torch.device("cuda", 0)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = initialised_trainer(recursive_find_trainer_class_by_name(trainer_name), setting, device)
    batch = torch.randn(setting.batch_size, setting.input_channels, *setting.patch_size, device=device)
    step = trainer_train_step(trainer, batch, setting.num_classes)
    seconds = [call_seconds(step, device) for _ in range(steps)]
    peak_gb = torch.cuda.max_memory_allocated(device) / 2**30

    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    predictor = nnUNetPredictor(device=device, allow_tqdm=False)
    predictor.manual_initialization(
        trainer.network,
        trainer.plans_manager,
        trainer.configuration_manager,
        None,
        benchmark_dataset_json(setting),
        trainer_name,
        None,
    )
    case = torch.randn(setting.input_channels, slices, *setting.patch_size)
    prediction_seconds = call_seconds(lambda: predictor.predict_logits_from_preprocessed_data(case), device)
    compiled = "compiled" if trainer._do_i_compile() else "eager"
    return (
        f"| {trainer_name} | {compiled} | {seconds[0]:.1f} | {1000 * statistics.median(seconds[1:]):.0f} | "
        f"{peak_gb:.2f} | {prediction_seconds:.1f} |"
    )


def two_dimensional_trainers() -> list[str]:
    """nnU-Net's default trainer and every registered trainer (each builds a 2D network)."""
    from nnunet_ext.registration import registered_trainer_names

    return ["nnUNetTrainer", *registered_trainer_names()]


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        fail(PROGRAM, "needs a CUDA device (it measures nnU-Net's compiled float16 training on a GPU)")
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, preset {args.preset}, {args.steps} steps")
    print("| trainer | network | first step s | step ms | peak train GB | prediction s |")
    print("|---|---|---|---|---|---|")
    for trainer in args.trainers or two_dimensional_trainers():
        try:
            row = measure_on_gpu(trainer, args.preset, args.steps, args.slices)
        except torch.cuda.OutOfMemoryError:
            row = f"| {trainer} | out of GPU memory | | | | |"
        except (RuntimeError, ValueError) as error:
            row = f"| {trainer} | not measured: {error} | | | | |"
        torch.cuda.empty_cache()
        print(row, flush=True)


if __name__ == "__main__":
    main()
