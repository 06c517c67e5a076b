"""PSNR, the one behind every PSNR diffice reports (``ddpm-check``, the change outside a fault's
footprint, synthesis edits): per frame, of images in [-1, 1] (peak-to-peak 2), in float64,
``10 log10(4 / MSE)`` over the pixels of ``where`` (NaN for a frame with none: nothing to compare).

**At most PSNR_CAP = 60 dB.** Identical frames (the sparse refinement's, RePaint's held region)
have an infinite PSNR, which a mean cannot take. 60 dB is an RMS change of a quarter grey level
(one grey level everywhere is 48.1 dB): unchanged for any purpose of the reports, and the cap the
published locality numbers were made with.
"""

from __future__ import annotations

import math

import torch

PSNR_CAP = 60.0


def psnr(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> list[float]:
    """Per-frame PSNR in dB of ``a`` and ``b`` (B, ...) in [-1, 1], over ``where`` (bool, B frames of
    the same size) or every pixel; at most :data:`PSNR_CAP`, NaN for a frame with no pixel in ``where``."""
    d2 = ((a.double() - b.double()) ** 2).reshape(a.shape[0], -1)
    keep = torch.ones_like(d2, dtype=torch.bool) if where is None else where.reshape(a.shape[0], -1).bool()
    out = []
    for frame, k in zip(d2, keep, strict=True):
        mse = float(frame[k].mean()) if bool(k.any()) else math.nan
        out.append(math.nan if math.isnan(mse) else PSNR_CAP if mse == 0 else min(PSNR_CAP, 10.0 * math.log10(4.0 / mse)))
    return out
