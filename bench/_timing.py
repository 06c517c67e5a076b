"""Timing helpers shared by the benchmarks: device-synchronised median wall time."""

from __future__ import annotations

import time

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int = 1, warmup: bool = True) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs, after one warm-up run unless ``warmup``
    is False (for long runs that are their own warm-up, such as a whole counterfactual batch)."""
    if warmup:
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]
