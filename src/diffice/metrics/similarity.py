"""SonoSim: mean cosine similarity of SonoNet features, input vs counterfactual (paper, section 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from diffice.metrics.frechet import FeatureFn


class SonoSim(Metric):
    """Mean over pairs of cos(phi(x), phi(x_c)); ``feature_fn`` takes (B,1,H,W) in [-1, 1].

    With ``feature_fn=None`` :meth:`update` takes features (B, ...) directly. ``valid``
    optionally restricts the pairs (the report uses all pairs). NaN when no pair was added.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, feature_fn: FeatureFn | None = None, **kwargs):
        super().__init__(**kwargs)
        self.feature_fn = feature_fn
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def pair_cosines(self, inputs: torch.Tensor, counterfactuals: torch.Tensor) -> torch.Tensor:
        """cos(phi(x), phi(x_c)) per pair, (B,) float64 (features computed by ``feature_fn`` if set)."""
        with torch.no_grad():
            a = self.feature_fn(inputs) if self.feature_fn is not None else inputs
            b = self.feature_fn(counterfactuals) if self.feature_fn is not None else counterfactuals
        return F.cosine_similarity(a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double(), dim=1)

    def update_cosines(self, cos: torch.Tensor) -> None:
        """Add per-pair cosines as from :meth:`pair_cosines`."""
        self.total += cos.sum().to(self.total.device)
        self.count += len(cos)

    def update(self, inputs: torch.Tensor, counterfactuals: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        if valid is not None:
            keep = torch.as_tensor(valid, dtype=torch.bool, device=inputs.device)
            inputs, counterfactuals = inputs[keep], counterfactuals[keep]
        if len(inputs) == 0:
            return
        self.update_cosines(self.pair_cosines(inputs, counterfactuals))

    def compute(self) -> torch.Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.total / self.count
