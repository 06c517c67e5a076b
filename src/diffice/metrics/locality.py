"""Where a counterfactual changed the frame: the explanation map's numbers (per frame).

A counterfactual should change what it must and keep the rest (issue 23). Per frame, from the
input x and the counterfactual x_c (images in [-1, 1]):

- ``changed_fraction``: share of pixels that moved by more than 2 grey levels (of 255);
- ``regions``: for each class of the input's segmentation (background too), the share of the
  squared change Σ (x_c − x)² that falls inside it — which anatomy the change is about;
- with a ground-truth target (phantom, hc18-faults): ``in_footprint``, the share of the squared
  change inside the fault's footprint (where the low-passed input and target differ by more than
  δ = 0.1 at σ = width / 40, dilated by 3 px: :func:`footprint`), and ``psnr_outside``, the PSNR
  of x_c to x outside it (:func:`diffice.metrics.psnr.psnr`: at most 60 dB, which a frame that
  changed nothing outside gets, as the sparse refinement can leave it bit for bit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from diffice.metrics.psnr import psnr
from diffice.metrics.target import grow, low_pass

GREY_LEVEL = 2.0 / 255.0  # one grey level in [-1, 1] units
CHANGED = 2 * GREY_LEVEL
FOOTPRINT_DILATION = 3


def footprint(x: torch.Tensor, target: torch.Tensor, sigma: float | None = None, delta: float = 0.1,
              dilation: int = FOOTPRINT_DILATION) -> torch.Tensor:
    """(B,1,H,W) bool: where the low-passed input and target differ by more than ``delta``, dilated
    by ``dilation`` pixels (the fault's footprint, as :func:`diffice.metrics.target.target_l1` takes it)."""
    d = (low_pass(x.double(), sigma) - low_pass(target.double(), sigma)).abs() > delta
    return grow(d.double(), dilation) > 0


def change_locality(x: torch.Tensor, cf: torch.Tensor, seg: np.ndarray | None = None,
                    classes: Sequence[str] = (), target: torch.Tensor | None = None) -> dict:
    """The locality record of one frame: ``x``, ``cf``, ``target`` (1,H,W) or (H,W) tensors in
    [-1, 1], ``seg`` the input's class map (H,W) with ``classes`` its names."""
    x, cf = x.double().reshape(1, 1, *x.shape[-2:]), cf.double().reshape(1, 1, *cf.shape[-2:])
    d2 = (cf - x) ** 2
    total = float(d2.sum())
    out: dict = {"changed_fraction": float(((cf - x).abs() > CHANGED).double().mean()),
                 "rms": math.sqrt(total / d2.numel())}
    if seg is not None and classes:
        s = torch.as_tensor(np.asarray(seg)).reshape(d2.shape[-2:])
        out["regions"] = {name: (float(d2[0, 0][s == c].sum()) / total if total > 0 else None)
                          for c, name in enumerate(classes)}
    if target is not None:
        fp = footprint(x, target.double().reshape(1, 1, *target.shape[-2:]))
        inside = float((d2 * fp).sum())
        out["footprint_fraction"] = float(fp.double().mean())
        out["in_footprint"] = inside / total if total > 0 else None
        out["psnr_outside"] = psnr(x, cf, ~fp)[0]
    return out
