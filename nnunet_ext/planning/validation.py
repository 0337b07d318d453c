"""The memory estimate against measured CPU peaks: ``python -m nnunet_ext.planning.validation``.

For each trainer, at a benchmark preset: the estimate of a float32 step (:func:`training_peak_bytes` with
``autocast_dtype=None``, what a CPU trains) without the parameters and buffers, against the measured growth of the
resident set size of a fresh process over two real train steps (peak RSS during the steps minus RSS after the
trainer was built, which already holds the parameters), at two batch sizes. RSS also holds what the estimate leaves
out on purpose (allocator caches, oneDNN's scratch buffers and weight reorders, Python objects), so the estimate is
expected below it; those parts hardly grow with the batch, so the growth per sample between the two batches compares
the activation memory itself. Both ratios are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass

from nnunet_ext.command_line import HelpFormatter

PROGRAM = "python -m nnunet_ext.planning.validation"
MIB = 2**20


@dataclass(frozen=True)
class MemoryCheck:
    """Estimated and measured step memory (bytes above the parameters and buffers) of one trainer at two batches."""

    trainer: str
    preset: str
    batch_sizes: tuple[int, int]
    estimated_bytes: tuple[int, int]
    measured_bytes: tuple[int, int]

    @property
    def ratio(self) -> float:
        """Estimate over measurement at the larger batch."""
        return self.estimated_bytes[1] / self.measured_bytes[1]

    @property
    def per_sample_ratio(self) -> float:
        """Estimate over measurement of the growth per sample between the two batches (constant parts, such as
        the resident caches the estimate leaves out, cancel)."""
        return (self.estimated_bytes[1] - self.estimated_bytes[0]) / (self.measured_bytes[1] - self.measured_bytes[0])


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_resident_bytes() -> int:
    """This process's peak resident set size: ``VmHWM`` of ``/proc/self/status``, which starts anew at ``exec``
    (``getrusage``'s ``ru_maxrss`` keeps the parent's peak across ``exec``: a child of a large process would
    report the parent's)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def measure_step_growth(trainer_name: str, preset: str, batch_size: int) -> int:
    """In this process (fresh, single-threaded): RSS growth over two real float32 train steps of the trainer."""
    import torch
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_ext.benchmark.presets import setting_from_preset
    from nnunet_ext.benchmark.trainer_step import initialised_trainer, trainer_train_step

    torch.set_num_threads(1)
    setting = setting_from_preset(preset, batch_size)
    trainer = initialised_trainer(recursive_find_trainer_class_by_name(trainer_name), setting, torch.device("cpu"))
    data = torch.randn(batch_size, setting.input_channels, *setting.patch_size)
    step = trainer_train_step(trainer, data, setting.num_classes)
    before = _resident_bytes()
    step()
    step()
    return _peak_resident_bytes() - before


def estimate_step_bytes(trainer_name: str, preset: str, batch_size: int) -> int:
    """The float32 estimate of the same steps, less the parameters and buffers of every network."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_ext.benchmark.presets import setting_from_preset
    from nnunet_ext.benchmark.trainer_step import benchmark_dataset_json
    from nnunet_ext.planning.memory import weights_and_step_peak_bytes

    setting = setting_from_preset(preset, batch_size)
    _, step_peak = weights_and_step_peak_bytes(
        recursive_find_trainer_class_by_name(trainer_name),
        setting.plans,
        setting.configuration,
        benchmark_dataset_json(setting),
        batch_size,
        autocast_dtype=None,
    )
    return step_peak


def _measured_in_fresh_process(trainer_name: str, preset: str, batch_size: int) -> int:
    """:func:`measure_step_growth` in a new Python process (its peak RSS is its own)."""
    measured = subprocess.run(
        [sys.executable, "-m", "nnunet_ext.planning.validation", "--measure", trainer_name, preset, str(batch_size)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(measured.stdout.strip().splitlines()[-1])["measured_bytes"]


def check(trainer_name: str, preset: str, batch_sizes: tuple[int, int]) -> MemoryCheck:
    """Estimates here, measurements each in a fresh process, at both batch sizes."""
    return MemoryCheck(
        trainer_name,
        preset,
        batch_sizes,
        tuple(estimate_step_bytes(trainer_name, preset, b) for b in batch_sizes),
        tuple(_measured_in_fresh_process(trainer_name, preset, b) for b in batch_sizes),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "-tr",
        "--trainers",
        nargs="+",
        default=["nnUNetTrainer", "nnUNetTrainerCMUNeXt", "nnUNetTrainerGCTUNet", "nnUNetTrainerMGCC_CMUNeXt"],
        help="trainer names",
    )
    parser.add_argument("--preset", default="2d_small", help="benchmark preset (default: 2d_small)")
    parser.add_argument("--batch-sizes", nargs=2, type=int, default=[2, 6], help="the two batch sizes compared")
    parser.add_argument("--measure", nargs=3, metavar=("TRAINER", "PRESET", "BATCH"), help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.measure:
        trainer_name, preset, batch_size = args.measure
        print(json.dumps({"measured_bytes": measure_step_growth(trainer_name, preset, int(batch_size))}))
        return
    small, large = args.batch_sizes
    print(
        f"| trainer | preset | estimated MB (batch {small}, {large}) | measured MB (RSS growth) "
        f"| estimate / measured at batch {large} | per sample: estimate / measured |"
    )
    print("|---|---|---|---|---|---|")
    for trainer_name in args.trainers:
        result = check(trainer_name, args.preset, (small, large))
        estimated = ", ".join(f"{b / MIB:.0f}" for b in result.estimated_bytes)
        measured = ", ".join(f"{b / MIB:.0f}" for b in result.measured_bytes)
        print(
            f"| {result.trainer} | {result.preset} | {estimated} | {measured} | {result.ratio:.2f} "
            f"| {result.per_sample_ratio:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
