"""Efficiency: seconds per batch (device-synchronised), total hours, peak memory, denoiser calls.

Helpers for the engine: :class:`Stopwatch` (synchronises the device before reading the clock,
so queued GPU work is counted) and :func:`peak_memory_bytes` (CUDA: ``max_memory_allocated``;
CPU: the process's peak resident set size from ``resource.getrusage``).

Under DDP the batch times of all processes are pooled and "total hours" is their sum, i.e.
device-hours, which for one device equals the paper's total time.
"""

from __future__ import annotations

import math
import resource
import sys
import time

import torch
from torchmetrics import Metric


def device_synchronize(device: torch.device | str | None = None) -> None:
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)
    elif device is not None and device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.synchronize()


def peak_memory_bytes(device: torch.device | str | None = None) -> int:
    """Peak GPU memory allocated on ``device`` (CUDA) or peak process RSS (CPU), in bytes."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB, macOS bytes


def reset_peak_memory(device: torch.device | str | None = None) -> None:
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


class Stopwatch:
    """``with Stopwatch(device) as sw: ...; sw.seconds`` — wall time with device syncs at both ends."""

    def __init__(self, device: torch.device | str | None = None):
        self.device = device
        self.seconds = float("nan")

    def __enter__(self) -> Stopwatch:
        device_synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        device_synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0


class Efficiency(Metric):
    """Pools batch times, frame counts, denoiser evaluations (NFE) and peak memory (max)."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("sum_s", "sum_s2"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("n_batches", "n_frames", "nfe"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("peak_bytes", default=torch.tensor(-1.0, dtype=torch.float64), dist_reduce_fx="max")

    def update(self, batch_seconds: float, frames: int = 0, nfe: int = 0, peak_bytes: float | None = None) -> None:
        """One batch: its device-synchronised seconds, frame count, denoiser calls, peak memory."""
        s = float(batch_seconds)
        self.sum_s += s
        self.sum_s2 += s * s
        self.n_batches += 1
        self.n_frames += int(frames)
        self.nfe += int(nfe)
        if peak_bytes is not None and math.isfinite(float(peak_bytes)):
            self.peak_bytes.fill_(max(float(self.peak_bytes), float(peak_bytes)))

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.n_batches.double()
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        mean = self.sum_s / n if n > 0 else nan
        # sample standard deviation over batches (NaN for a single batch)
        var = (self.sum_s2 - n * mean * mean) / (n - 1) if n > 1 else nan
        return {
            "batch_seconds_mean": mean,
            "batch_seconds_std": var.clamp(min=0).sqrt() if n > 1 else nan,
            "total_hours": self.sum_s / 3600.0,
            "peak_memory_gb": self.peak_bytes / 1e9 if self.peak_bytes >= 0 else nan,
            "nfe": self.nfe.clone(),
            "nfe_per_frame": self.nfe / self.n_frames.double() if self.n_frames > 0 else nan,
            "n_batches": self.n_batches.clone(),
        }
