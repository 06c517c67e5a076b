"""Fréchet distance between two feature distributions: FID (Inception) and FSD (SonoNet).

    d^2 = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr( (S_1^{1/2} S_2 S_1^{1/2})^{1/2} )

(Dowson & Landau 1982; Heusel et al. 2017, the paper's ref. [6]). The trace of the matrix square
root is taken from the eigenvalues of the symmetric PSD matrix S_1^{1/2} S_2 S_1^{1/2}, which
equals tr sqrt(S_1 S_2) without the complex round-off that ``scipy.linalg.sqrtm(S_1 @ S_2)``
can produce. All maths is float64 (numpy).

Convention (DiME, and the paper's section 4): the "real" set is ALL the NSP inputs, the
"fake" set only the VALID (flipped) counterfactuals: ``update(inputs, counterfactuals, valid)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (ddof=1, as pytorch-fid) of (N, D) features, float64."""
    f = np.asarray(features, dtype=np.float64)
    mu = f.mean(axis=0)
    centred = f - mu
    sigma = centred.T @ centred / (f.shape[0] - 1)
    return mu, sigma


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2) (float64; symmetric PSD covariances)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    r1 = _psd_sqrt(s1)
    middle = r1 @ s2 @ r1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


class FrechetDistance(Metric):
    """Fréchet distance between the features of inputs ("real") and valid counterfactuals ("fake").

    ``feature_fn`` maps images (B,1,H,W) in [-1, 1] to (B, D) features (e.g. ``FeatureNets.fid``
    for FID or ``FeatureNets.sononet`` for FSD); with ``feature_fn=None`` :meth:`update` takes
    features directly. Features are kept as lists concatenated across processes (``cat``), so
    the metric is exact under DDP. With fewer than two samples on a side :meth:`compute` returns
    NaN and sets :attr:`note` instead of failing; with fewer samples than feature dimensions the
    covariances are singular and the value is biased upwards (noted as well).
    """

    higher_is_better = False
    full_state_update = False

    def __init__(self, feature_fn: FeatureFn | None = None, name: str = "FD", **kwargs):
        super().__init__(**kwargs)
        self.feature_fn = feature_fn
        self.name = name
        self.note = ""
        self.add_state("real", default=[], dist_reduce_fx="cat")
        self.add_state("fake", default=[], dist_reduce_fx="cat")

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.feature_fn is not None and x.numel() > 0:
            with torch.no_grad():
                x = self.feature_fn(x)
        return x.detach().reshape(x.shape[0], -1).to(torch.float64)

    def update(self, inputs: torch.Tensor | None = None, counterfactuals: torch.Tensor | None = None,
               valid: torch.Tensor | None = None) -> None:
        """Add inputs (all count) and counterfactuals (only where ``valid`` is True, if given)."""
        if inputs is not None and len(inputs):
            self.real.append(self._features(inputs))
        if counterfactuals is not None and len(counterfactuals):
            if valid is not None:
                counterfactuals = counterfactuals[torch.as_tensor(valid, dtype=torch.bool, device=counterfactuals.device)]
            if len(counterfactuals):
                self.fake.append(self._features(counterfactuals))

    def compute(self) -> torch.Tensor:
        real = dim_zero_cat(self.real).cpu().numpy() if len(self.real) else np.zeros((0, 0))
        fake = dim_zero_cat(self.fake).cpu().numpy() if len(self.fake) else np.zeros((0, 0))
        n_real, n_fake = real.shape[0], fake.shape[0]
        if n_real < 2 or n_fake < 2:
            self.note = (f"{self.name}: needs at least 2 inputs and 2 valid counterfactuals, "
                         f"got {n_real} and {n_fake}; reported as NaN")
            return torch.tensor(float("nan"), dtype=torch.float64)
        dim = real.shape[1]
        self.note = ""
        if min(n_real, n_fake) <= dim:
            self.note = (f"{self.name}: {min(n_real, n_fake)} samples for {dim}-dimensional features; "
                         "covariances are singular and the value is biased (compare only at equal N)")
        value = frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))
        return torch.tensor(value, dtype=torch.float64)
