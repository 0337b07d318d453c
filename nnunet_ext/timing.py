"""Wall time and peak memory of a callable, on the CPU or a CUDA device (the benchmarks' clocks)."""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def call_seconds(step: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call of ``step()`` (e.g. a first call that compiles)."""
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def median_milliseconds(step: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``step()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def memory_in_use(device: torch.device) -> int:
    """Bytes in use now: memory allocated on a CUDA device, else the process's resident set size."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_mb(device: torch.device, baseline: int) -> float:
    """Peak memory above ``baseline`` bytes: CUDA since the last ``reset_peak_memory_stats``, CPU peak RSS."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return (peak - baseline) / 2**20
