"""``nnUNetv2_ext_benchmark``: params, FLOPs, latency, train-step time and peak memory of trainers' networks."""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from tqdm import tqdm

from nnunet_ext.benchmark.presets import PRESETS, BenchmarkSetting, setting_from_plans, setting_from_preset
from nnunet_ext.cli.common import HelpFormatter
from nnunet_ext.registration import registered_trainer_names

# torch and the measuring modules (which import it) are imported where used, so --help answers at once

DEFAULT_TRAINER = "nnUNetTrainer"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_ext_benchmark",
        description="Measure, for each trainer, the network it builds: parameters, FLOPs (torch FlopCounterMode, "
        "one patch), FLOPs of one train step (forward + backward, one batch), forward latency and train-step time "
        "(median over repeats, one batch), and peak memory of the train step. Each trainer runs in a fresh process. "
        "Prints a table (with train-step time relative to nnU-Net's default network) and writes JSON.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "-tr",
        "--trainers",
        nargs="+",
        default=None,
        help="trainer names (any name nnUNetv2_train accepts); default: nnUNetTrainer and every registered trainer",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--preset",
        default="2d_256",
        choices=sorted(PRESETS),
        help="a built-in patch/batch setting: "
        + "; ".join(
            f"{name}: patch {'x'.join(map(str, p.patch_size))}, batch {p.batch_size}, "
            f"{p.input_channels} channel(s), {p.num_classes} classes"
            for name, p in PRESETS.items()
        ),
    )
    where.add_argument(
        "--plans", type=Path, help="a plans file (e.g. $nnUNet_preprocessed/DatasetXXX/nnUNetPlans.json)"
    )
    parser.add_argument("-c", "--configuration", default="2d", help="configuration of --plans to benchmark")
    parser.add_argument("--batch-size", type=int, help="override the batch size of the preset or plans")
    parser.add_argument("--input-channels", type=int, help="with --plans: override channels (default: dataset.json)")
    parser.add_argument(
        "--num-classes", type=int, help="with --plans: override output channels (default: dataset.json)"
    )
    parser.add_argument(
        "--device",
        default=None,
        choices=["cpu", "cuda"],
        help="device to measure on (default: cuda if available, else cpu)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    parser.add_argument(
        "-o", "--output", type=Path, help="JSON output file (default: benchmark_<setting>_<device>.json)"
    )
    return parser


def format_table(rows: list[dict], reference: dict | None) -> str:
    """Markdown table of the measurements; the ratio column is train-step time over ``reference``'s."""
    header = (
        "| trainer | network | params | params fwd | GFLOPs | fwd ms | train-step GFLOPs | train-step ms "
        "| x default | peak MB |"
    )
    lines = [header, "|" + "---|" * 10]
    for row in rows:
        if row["error"]:
            lines.append(f"| {row['trainer']} | not measured: {row['error']} |" + " |" * 8)
            continue
        ratio = row["train_step_ms"] / reference["train_step_ms"] if reference else math.nan
        lines.append(
            f"| {row['trainer']} | {row['network']} | {row['params']:,} | {row['params_forward']:,} | "
            f"{row['gflops']:.2f} | {row['forward_ms']:.1f} | {row['train_step_gflops']:.1f} | "
            f"{row['train_step_ms']:.1f} | {ratio:.2f} | {row['peak_memory_mb']:.0f} |"
        )
    return "\n".join(lines)


def format_scheme_table(rows: list[dict]) -> str:
    """Markdown table of each semi-supervised trainer's train step over supervised training at the same total batch:
    of the same network's inference path (time, and step FLOPs: the least time ratio at equal arithmetic
    efficiency), and of its supervised reference trainer when that was measured too."""
    measured = {row["trainer"]: row for row in rows if not row["error"]}
    lines = []
    for row in measured.values():
        same_network = row.get("same_network_supervised_ms", math.nan)
        if math.isnan(same_network):
            continue
        reference = measured.get(row.get("supervised_reference") or "")
        reference_cells = (
            f"{reference['trainer']} | {reference['train_step_ms']:.1f} | "
            f"{row['train_step_ms'] / reference['train_step_ms']:.2f}"
            if reference
            else "- | - | -"
        )
        flops_ratio = row.get("train_step_gflops", math.nan) / row.get("same_network_supervised_gflops", math.nan)
        lines.append(
            f"| {row['trainer']} | {row['train_step_ms']:.1f} | {same_network:.1f} | "
            f"{row['train_step_ms'] / same_network:.2f} | {flops_ratio:.2f} | {reference_cells} | "
            f"{row['peak_memory_mb']:.0f} |"
        )
    if not lines:
        return ""
    header = (
        "| scheme trainer | scheme train-step ms | same network supervised ms | x same network | "
        "x same network FLOPs | supervised reference | reference train-step ms | x reference | scheme peak MB |"
    )
    return "\n".join([header, "|" + "---|" * 9, *lines])


def format_op_class_table(rows: list[dict]) -> str:
    """Markdown table of each trainer's train step by operation class: milliseconds inside the class's operations
    and, for the classes that do arithmetic, GFLOP/s."""
    from nnunet_ext.benchmark.op_classes import ARITHMETIC_CLASSES, OP_CLASSES

    lines = []
    for row in rows:
        classes = row.get("op_classes") or {}
        if row["error"] or not classes:
            continue
        cells = []
        for name in OP_CLASSES:
            ms, gflops = classes[name]["ms"], classes[name]["gflops"]
            cells.append(f"{ms:.0f}")
            if name in ARITHMETIC_CLASSES:
                cells.append(f"{gflops / ms * 1e3:.0f}" if ms > 0 and gflops > 0 else "-")
        total = sum(c["ms"] for c in classes.values())
        lines.append(f"| {row['trainer']} | " + " | ".join(cells) + f" | {total:.0f} |")
    if not lines:
        return ""
    header = ["trainer"]
    for name in OP_CLASSES:
        header.append(f"{name} ms")
        if name in ARITHMETIC_CLASSES:
            header.append(f"{name} GFLOP/s")
    header.append("sum ms")
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *lines])


def run_benchmark(
    trainers: list[str],
    setting: BenchmarkSetting,
    device: str,
    warmup: int,
    repeats: int,
    threads: int,
    measure: Callable[..., dict] | None = None,
) -> list[dict]:
    """Measure every trainer in a fresh spawned process (isolated memory peak and no cross-talk) with ``measure``
    (default: ``measure_trainer``). A process that dies (e.g. killed for memory) gives a row with the error instead
    of stopping or hanging the benchmark."""
    from nnunet_ext.benchmark.measure import Measurement, measure_trainer

    measure = measure or measure_trainer
    context = multiprocessing.get_context("spawn")
    rows = []
    for trainer in tqdm(trainers, desc="benchmark", unit="trainer"):
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            future = pool.submit(measure, trainer, setting, device, warmup, repeats, threads)
            try:
                rows.append(future.result())
            except BrokenProcessPool:
                rows.append(Measurement(trainer, error="the measuring process died (out of memory?)").as_dict())
    return rows


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("nnUNetv2_ext_benchmark: --device cuda requested but CUDA is not available")
    if args.plans is not None:
        if not args.plans.is_file():
            sys.exit(f"nnUNetv2_ext_benchmark: plans file {args.plans} does not exist")
        setting = setting_from_plans(
            args.plans, args.configuration, args.batch_size, args.input_channels, args.num_classes
        )
        name = f"{args.plans.stem}_{args.configuration}"
    else:
        setting = setting_from_preset(args.preset, args.batch_size)
        name = args.preset
    trainers = args.trainers or [DEFAULT_TRAINER, *registered_trainer_names()]
    rows = run_benchmark(trainers, setting, args.device, args.warmup, args.repeats, args.threads)
    reference = next((r for r in rows if r["trainer"] == DEFAULT_TRAINER and not r["error"]), None)
    print(
        f"\n{setting.label}: patch {'x'.join(map(str, setting.patch_size))}, batch {setting.batch_size}, "
        f"{setting.input_channels} -> {setting.num_classes} channels, device {args.device}, "
        f"{args.threads} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}\n"
    )
    print(format_table(rows, reference))
    op_classes = format_op_class_table(rows)
    if op_classes:
        print(f"\nOne train step by operation class (time inside the operations, timed one by one):\n\n{op_classes}")
    schemes = format_scheme_table(rows)
    if schemes:
        print(f"\nSemi-supervised train step vs supervised training at the same total batch:\n\n{schemes}")
    output = args.output or Path(f"benchmark_{name}_{args.device}.json")
    report = {
        "setting": setting.label,
        "patch_size": list(setting.patch_size),
        "batch_size": setting.batch_size,
        "input_channels": setting.input_channels,
        "num_classes": setting.num_classes,
        "device": args.device,
        "threads": args.threads,
        "torch": torch.__version__,
        "repeats": args.repeats,
        "rows": rows,
    }
    output.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {output}")


if __name__ == "__main__":
    main()
