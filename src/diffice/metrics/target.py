"""Phantom ground truth: distance of input and counterfactual to the known target SP frame.

The distance is an L1 at the anatomy's scale, inside the fault's footprint. Both images are
low-passed with a Gaussian of σ = width / 40 pixels (2 px at 64x80, 7.2 px at 224x288); the
footprint is where the low-passed input and target differ by more than ``delta`` (0.1 in
[-1, 1] units): the thalami a tilt hid, the CSP that is missing, the whole head for a blur or
gain fault. The distance is the mean |G*x - G*target| over the footprint.

Why not a pixel L1 over the frame: a phantom's target shares the input's speckle and brain
texture exactly (it differs only where the fault is), while every diffusion pass redraws them
from noise. On 64x80 phantom frames a perfect repair with redrawn speckle is 0.04-0.07 from
the target even after the low-pass, farther than most faulty inputs (0.006-0.03 for local
faults) — such a measure cannot see a repair. Inside the footprint the fault's own difference
(> delta by construction) dominates. Changes outside the footprint are not judged here; the
realism and closeness metrics (FID, SonoSim, MAD) judge those.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics import Metric

SIGMA_PER_WIDTH = 1.0 / 40.0
SECTOR_SIGMA_PER_WIDTH = 3.0 / 80.0  # whole-frame closeness: 3 px at 64x80, clearly coarser than speckle
SECTOR_BLACK = -0.95  # the imaged sector: where the low-passed frame is brighter than this


def low_pass(x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Separable Gaussian blur of (B,C,H,W) images (reflect padding); σ defaults to W/40."""
    sigma = float(sigma if sigma is not None else x.shape[-1] * SIGMA_PER_WIDTH)
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3.0 * sigma)))
    r = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    k = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def grow(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """A (B,1,H,W) 0/1 float mask grown by ``pixels`` (a square max filter of side 2·pixels + 1)."""
    if pixels <= 0:
        return mask
    return F.max_pool2d(mask, 2 * int(pixels) + 1, stride=1, padding=int(pixels))


def footprint(reference: torch.Tensor, target: torch.Tensor, sigma: float | None = None, delta: float = 0.1) -> torch.Tensor:
    """(B,1,H,W) bool: a fault's footprint, where the low-passed (σ, default W/40) ``reference`` (the faulty
    frame) and ``target`` (its clean twin) differ by more than ``delta`` ([-1, 1] units); that of :func:`target_l1`."""
    return (low_pass(reference.double(), sigma) - low_pass(target.double(), sigma)).abs() > delta


def target_l1(
    x: torch.Tensor,
    target: torch.Tensor,
    reference: torch.Tensor | None = None,
    sigma: float | None = None,
    delta: float = 0.1,
) -> torch.Tensor:
    """Per-sample anatomy-scale L1 of (B,1,H,W) images in [-1, 1] to ``target``, inside the
    footprint where the low-passed ``reference`` (the faulty input; default ``x``) differs from
    the low-passed target by more than ``delta``. NaN where the footprint is empty (a frame
    without a fault). Values in [0, 2]."""
    t = low_pass(target.double(), sigma)
    d = (low_pass(x.double(), sigma) - t).abs()
    m = (d > delta if reference is None else footprint(reference, target, sigma, delta)).double()
    n = m.flatten(1).sum(1)
    out = (d * m).flatten(1).sum(1) / n.clamp_min(1)
    return torch.where(n > 0, out, torch.full_like(out, float("nan")))


def imaged_sector(x: torch.Tensor, sigma: float, black: float = SECTOR_BLACK) -> torch.Tensor:
    """(B,1,H,W) bool: the imaged sector of (B,1,H,W) frames, where the frame low-passed at σ
    (pixels) is brighter than ``black``; computed in ``x``'s dtype."""
    return low_pass(x, sigma) > black


def sector_l1(x: torch.Tensor, target: torch.Tensor, sigma: float | None = None, black: float = SECTOR_BLACK) -> torch.Tensor:
    """Per-sample anatomy-scale L1 of (B,1,H,W) images to ``target`` over the whole imaged sector
    (where the low-passed target is brighter than ``black``), not only the fault's footprint: a
    counterfactual that repairs the fault but loses the midline elsewhere is farther here. σ
    defaults to 3·W/80 (3 px at 64x80, 6 px at 128x160; before 2026-12-06 it was W/40): a
    diffusion pass redraws the speckle everywhere, and the distance must see the anatomy, not it."""
    sigma = float(sigma if sigma is not None else x.shape[-1] * SECTOR_SIGMA_PER_WIDTH)
    t = low_pass(target.double(), sigma)
    d = (low_pass(x.double(), sigma) - t).abs()
    m = (t > black).double()  # imaged_sector(target, sigma, black), from the low-pass already taken
    n = m.flatten(1).sum(1)
    out = (d * m).flatten(1).sum(1) / n.clamp_min(1)
    return torch.where(n > 0, out, torch.full_like(out, float("nan")))


class TargetDistance(Metric):
    """Mean distance to the target for inputs and counterfactuals, and how many counterfactuals got closer."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("sum_in", "sum_cf"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("n", "n_closer"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, l1_input, l1_cf) -> None:
        """Per-sample distances (B,) as from :func:`target_l1`; non-finite entries are skipped."""
        a = torch.as_tensor(l1_input, dtype=torch.float64).reshape(-1)
        b = torch.as_tensor(l1_cf, dtype=torch.float64).reshape(-1)
        ok = torch.isfinite(a) & torch.isfinite(b)
        a, b = a[ok], b[ok]
        self.sum_in += a.sum().to(self.sum_in.device)
        self.sum_cf += b.sum().to(self.sum_cf.device)
        self.n += len(a)
        self.n_closer += int((b < a).sum())

    def compute(self) -> dict[str, torch.Tensor]:
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        n = self.n.double()
        return {
            "target_l1_input": self.sum_in / n if n > 0 else nan,
            "target_l1_cf": self.sum_cf / n if n > 0 else nan,
            "n_closer": self.n_closer.clone(),
            "n_target": self.n.clone(),
        }
