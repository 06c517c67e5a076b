"""Adversarial-texture flag: high-frequency energy outside the range of real standard planes.

A guide can be "flipped" by a texture instead of by anatomy: the guiding gradient adds
high-frequency patterns that fool it. Such frames carry more fine detail than any real scan:
:func:`hf_energy` is the mean squared 4-neighbour Laplacian of the frame (images in [-1, 1]),
and a counterfactual is flagged when its energy exceeds the 99th percentile of the training
split's standard planes (:func:`hf_threshold`, computed once per run and stored in each
record). Speckle and sharp bone are part of real frames, so only energy beyond what real SP
frames show is flagged; a blurred input repaired to normal sharpness is not.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

QUANTILE = 0.99

_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def hf_energy(x: torch.Tensor) -> torch.Tensor:
    """Per-frame mean squared Laplacian of (B,1,H,W) images in [-1, 1], (B,) float32.

    Computed frame by frame: a convolution over a batch may take another kernel for another batch
    size (MKL's AVX-512 kernels on Intel CPUs do), and a record's value must not depend on the frames
    computed beside it."""
    k = _LAPLACE.to(x.device, torch.float32).view(1, 1, 3, 3)
    out = [(F.conv2d(F.pad(f[None].float(), (1, 1, 1, 1), mode="replicate"), k) ** 2).mean() for f in x]
    return torch.stack(out) if out else torch.zeros(0, device=x.device)


def hf_threshold(frames: Iterable[torch.Tensor], quantile: float = QUANTILE) -> float:
    """The ``quantile`` of :func:`hf_energy` over batches of real frames (B,1,H,W)."""
    parts = [hf_energy(f).cpu().numpy() for f in frames]
    values = np.concatenate(parts) if parts else np.zeros(0)
    if values.size == 0:
        return float("nan")
    return float(np.quantile(values, quantile))
