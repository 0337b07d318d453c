"""Planned batch of every trainer at several memory targets: ``python -m nnunet_ext.planning.batch_table``.

For each trainer that builds the preset's configuration (nnU-Net's ``nnUNetTrainer`` and every registered trainer),
:func:`~nnunet_ext.planning.fit.fit_configuration` at each target, the estimates shared between targets; the preset
stands for a dataset large enough that nnU-Net's 5% cap does not bind, and nnU-Net's own batch at each target (the
cap of the fitted batch) is the preset's batch scaled with the target as nnU-Net's planner scales it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from nnunet_ext.command_line import HelpFormatter

PROGRAM = "python -m nnunet_ext.planning.batch_table"
#: cases of the stand-in dataset: enough that a batch never covers 5% of its voxels
STAND_IN_CASES = 100_000


def nnunet_batch_size(batch_size_at_8_gb: int, target_gb: float) -> int:
    """nnU-Net's planned batch at ``target_gb`` where its patch already spans the median image: its planner's batch
    ``round(reference / estimate x reference batch)`` scales with the target through ``reference``."""
    return max(round(batch_size_at_8_gb * target_gb / 8), 2)


def cached_estimator(trainer_class: type, setting, dataset_json: dict) -> tuple[Callable[[dict, int], int], dict]:
    """:func:`~nnunet_ext.planning.memory.training_peak_bytes` of ``trainer_class`` for a configuration of the
    setting's plans and a batch, each (patch, batch) estimated once; returns it and its cache."""
    from nnunet_ext.planning.memory import training_peak_bytes

    cache: dict[tuple, int] = {}

    def estimate(candidate: dict, batch_size: int) -> int:
        key = (tuple(candidate["patch_size"]), batch_size)
        if key not in cache:
            plans = {**setting.plans, "configurations": {setting.configuration: candidate}}
            cache[key] = training_peak_bytes(trainer_class, plans, setting.configuration, dataset_json, batch_size)
        return cache[key]

    return estimate, cache


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--preset", default="2d_acdc", help="benchmark preset of the plan (default: 2d_acdc)")
    parser.add_argument("--targets", nargs="+", type=float, default=[8, 24, 80], help="memory targets, GB")
    parser.add_argument("-tr", "--trainers", nargs="+", help="trainer names (default: all that build the preset)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    import torch
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_ext.benchmark.presets import setting_from_preset
    from nnunet_ext.benchmark.trainer_step import benchmark_dataset_json
    from nnunet_ext.planning.fit import GIB, fit_configuration
    from nnunet_ext.planning.plans import trainer_builds
    from nnunet_ext.registration import registered_trainer_names

    torch.set_num_threads(1)
    setting = setting_from_preset(args.preset)
    dataset_json = benchmark_dataset_json(setting)
    configuration = setting.plans["configurations"][setting.configuration]
    names = args.trainers or ["nnUNetTrainer", *registered_trainer_names()]
    targets = " | ".join(f"{t:g} GB (nnU-Net: {nnunet_batch_size(setting.batch_size, t)})" for t in args.targets)
    print(f"preset {args.preset}: patch {list(setting.patch_size)}, nnU-Net's batch {setting.batch_size} at 8 GB")
    print("cells: patch, batch (estimated peak GB); columns: target (nnU-Net's batch there)")
    print(f"| trainer | {targets} | estimates |")
    print("|---|" + "---|" * len(args.targets) + "---|")
    for name in names:
        trainer_class = recursive_find_trainer_class_by_name(name)
        if not trainer_builds(trainer_class, setting.plans, setting.configuration, dataset_json):
            continue
        estimate, cache = cached_estimator(trainer_class, setting, dataset_json)
        cells = []
        for target in args.targets:
            source = {**configuration, "batch_size": nnunet_batch_size(setting.batch_size, target)}
            fitted = fit_configuration(setting.configuration, source, estimate, target * GIB, STAND_IN_CASES)
            patch = "x".join(map(str, fitted.patch_size))
            note = "" if fitted.fits else ", does not fit"
            cells.append(f"{patch}, {fitted.batch_size} ({fitted.peak_bytes / GIB:.1f}{note})")
        print(f"| {name} | {' | '.join(cells)} | {len(cache)} |", flush=True)


if __name__ == "__main__":
    main()
