"""Phantom ground truth: distance of input and counterfactual to the known target SP frame."""

from __future__ import annotations

import torch
from torchmetrics import Metric


def target_l1(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean |x - target| of (B,1,H,W) images in [-1, 1] (so a value in [0, 2])."""
    return (x.double() - target.double()).abs().flatten(1).mean(1)


class TargetDistance(Metric):
    """Mean L1 to the target for inputs and counterfactuals, and how many counterfactuals got closer."""

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
