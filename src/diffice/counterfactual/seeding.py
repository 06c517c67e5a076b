"""Per-frame random generators: every random number a frame uses comes from its own generator.

A frame's generator is seeded from ``(seed, dataset index, attempt)`` (``attempt`` = position
in the λc search), and noise is drawn frame by frame on the CPU, then moved to the device.
So a counterfactual does not depend on the batch it was in, on the number of devices, or
on which other frames were still being refined.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def frame_seed(seed: int, index: int, attempt: int = 0) -> int:
    """A 63-bit seed mixed from (global seed, dataset index, λc attempt)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index) & 0xFFFFFFFF, int(attempt)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def frame_generators(seed: int, indices: Sequence[int], attempt: int = 0) -> list[torch.Generator]:
    """One CPU ``torch.Generator`` per frame."""
    return [torch.Generator().manual_seed(frame_seed(seed, int(i), attempt)) for i in indices]


def randn_frames(generators: Sequence[torch.Generator], shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise of shape (len(generators), *shape), one frame per generator.

    Drawn in float32 on the CPU (identical on every device), returned on ``like``'s device
    and dtype.
    """
    noise = torch.stack([torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in generators])
    return noise.to(device=like.device, dtype=like.dtype)
