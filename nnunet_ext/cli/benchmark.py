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

from nnunet_ext.benchmark.modes import EAGER, StepMode
from nnunet_ext.benchmark.presets import PRESETS, BenchmarkSetting, setting_from_plans, setting_from_preset
from nnunet_ext.command_line import HelpFormatter
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
        "--compile",
        action="store_true",
        help="also time each trainer's step with its networks torch.compile-d (inductor), as nnU-Net trains on CUDA: "
        "compiled train-step ms, x eager, first-step seconds (compilation) and peak memory, in a table of its own",
    )
    parser.add_argument(
        "--amp",
        choices=["float16", "bfloat16"],
        help="also time each trainer's step under autocast to this dtype (float16 with a GradScaler, as nnU-Net on "
        "CUDA); with --compile, the compiled step too",
    )
    parser.add_argument(
        "--graph-breaks",
        action="store_true",
        help="list per trainer the torch.compile graph breaks of its training forward and their reasons "
        "(torch._dynamo.explain; the backward of each graph compiles as one graph)",
    )
    parser.add_argument(
        "-o", "--output", type=Path, help="JSON output file (default: benchmark_<setting>_<device>.json)"
    )
    return parser


def step_modes(compile: bool, amp: str | None) -> list[StepMode]:
    """The eager step, then the modes ``--compile`` and ``--amp`` ask for (their combination with both)."""
    modes = [EAGER]
    if amp:
        modes.append(StepMode(amp=amp))
    if compile:
        modes.append(StepMode(compile=True))
        if amp:
            modes.append(StepMode(compile=True, amp=amp))
    return modes


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


def format_mode_table(rows: list[dict], reference: str = DEFAULT_TRAINER) -> str:
    """Markdown table of each trainer's train step in every other mode than eager (compiled, autocast): time, ratio
    to its eager step and to ``reference``'s step in the same mode, first-step seconds and peak memory."""
    eager = {row["trainer"]: row for row in rows if row["mode"] == "eager" and not row["error"]}
    by_mode = {(row["trainer"], row["mode"]): row for row in rows if not row["error"]}
    lines = []
    for row in rows:
        if row["mode"] == "eager" or row["error"] or row["trainer"] not in eager:
            continue
        base = by_mode.get((reference, row["mode"]))
        ratio = f"{row['train_step_ms'] / base['train_step_ms']:.2f}" if base else "-"
        lines.append(
            f"| {row['trainer']} | {row['mode']} | {eager[row['trainer']]['train_step_ms']:.1f} | "
            f"{row['train_step_ms']:.1f} | {row['train_step_ms'] / eager[row['trainer']]['train_step_ms']:.2f} | "
            f"{ratio} | {row['first_step_seconds']:.1f} | {row['peak_memory_mb']:.0f} |"
        )
    if not lines:
        return ""
    header = (
        f"| trainer | mode | eager train-step ms | train-step ms | x eager | x {reference} (same mode) "
        "| first step s | peak MB |"
    )
    return "\n".join([header, "|" + "---|" * 8, *lines])


def format_graph_break_table(rows: list[dict]) -> str:
    """Markdown table of the graph breaks of each trainer's training forward, with their reasons."""
    lines = [
        f"| {row['trainer']} | {row['graph_breaks']} | {'; '.join(row['graph_break_reasons']) or '-'} |"
        for row in rows
        if row.get("graph_breaks") is not None
    ]
    if not lines:
        return ""
    return "\n".join(["| trainer | graph breaks | reasons |", "|---|---|---|", *lines])


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
    modes: list[StepMode] = (EAGER,),
    count_graph_breaks: bool = False,
) -> list[dict]:
    """Measure every trainer in every mode, each in a fresh spawned process (isolated memory peak and no
    cross-talk), with ``measure`` (default: ``measure_trainer``). A process that dies (e.g. killed for memory) gives a
    row with the error instead of stopping or hanging the benchmark."""
    from nnunet_ext.benchmark.measure import Measurement, measure_trainer

    measure = measure or measure_trainer
    context = multiprocessing.get_context("spawn")
    rows = []
    runs = [(trainer, mode) for trainer in trainers for mode in modes]
    for trainer, mode in tqdm(runs, desc="benchmark", unit="run"):
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            future = pool.submit(
                measure, trainer, setting, device, warmup, repeats, threads, mode, count_graph_breaks and mode == EAGER
            )
            try:
                rows.append(future.result())
            except BrokenProcessPool:
                died = Measurement(trainer, mode=mode.name, error="the measuring process died (out of memory?)")
                rows.append(died.as_dict())
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
    modes = step_modes(args.compile, args.amp)
    rows = run_benchmark(
        trainers,
        setting,
        args.device,
        args.warmup,
        args.repeats,
        args.threads,
        modes=modes,
        count_graph_breaks=args.graph_breaks,
    )
    eager_rows = [row for row in rows if row["mode"] == "eager"]
    reference = next((r for r in eager_rows if r["trainer"] == DEFAULT_TRAINER and not r["error"]), None)
    print(
        f"\n{setting.label}: patch {'x'.join(map(str, setting.patch_size))}, batch {setting.batch_size}, "
        f"{setting.input_channels} -> {setting.num_classes} channels, device {args.device}, "
        f"{args.threads} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}\n"
    )
    print(format_table(eager_rows, reference))
    tables = {
        "Train step in other modes (first step: compilation for a compiled step)": format_mode_table(rows),
        "torch.compile graph breaks of the training forward": format_graph_break_table(rows),
        "One train step by operation class (time inside the operations, timed one by one)": format_op_class_table(
            eager_rows
        ),
        "Semi-supervised train step vs supervised training at the same total batch": format_scheme_table(eager_rows),
    }
    for title, table in tables.items():
        if table:
            print(f"\n{title}:\n\n{table}")
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
        "modes": [mode.name for mode in modes],
        "rows": rows,
    }
    output.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {output}")


if __name__ == "__main__":
    main()
