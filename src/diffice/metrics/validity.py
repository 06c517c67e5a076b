"""Validity: flip ratio (FR), MAD, BKL from the guide; MQD and per-concept QD from the oracle.

Guide metrics (paper, section 4), over the inputs the guide calls NSP, p(x) <= threshold, where
p = sigma(f(.)) is the guide's SP probability (SP iff p > threshold, as the engine's ``flipped``):

    FR  = mean 1[p(x_c) > threshold]             (counterfactual classified as SP)
    MAD = mean |p(x) - p(x_c)|                   (FastDiME's mean absolute difference)
    BKL = mean (1 - p(x_c))                      (DiME's bounded KL for the SP target label)

Oracle metrics (paper: QD_O(x_c, x) = QS_O(x_c) - QS_O(x)), counting only the inputs the
oracle confidently calls low quality, QS_O(x) < 0.5:

    MQD          = 1/N sum_i 1[QS_O(x_i) < 0.5] QD_O(x_c_i, x_i)    (the paper's formula, N = all inputs)
    MQD_selected = the same sum divided by the number of selected inputs (a plain mean over them)
    QD_c         = mean over selected inputs of QS_c(x_c) - QS_c(x), per concept c (NaN scores skipped)

MQD is undefined (NaN; reported as null / n/a) when no input has finite oracle scores (e.g. an
oracle that returns NaN): 0 would claim a measurement that was not made.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


def _vec(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64).reshape(-1)


class Validity(Metric):
    """FR, MAD and BKL from guide SP probabilities (in [0, 1]) of inputs and counterfactuals."""

    full_state_update = False

    def __init__(self, threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.threshold = float(threshold)
        for name in ("n_total", "n_nsp", "n_flip"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        for name in ("sum_abs", "sum_bkl"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, p_input, p_cf) -> None:
        p_in, p_cf = _vec(p_input), _vec(p_cf)
        if p_in.shape != p_cf.shape:
            raise ValueError(f"p_input {tuple(p_in.shape)} and p_cf {tuple(p_cf.shape)} differ")
        keep = p_in <= self.threshold
        p_in, p_c = p_in[keep], p_cf[keep]
        dev = self.n_total.device
        self.n_total += len(keep)
        self.n_nsp += int(keep.sum())
        self.n_flip += int((p_c > self.threshold).sum())
        self.sum_abs += (p_in - p_c).abs().sum().to(dev)
        self.sum_bkl += (1.0 - p_c).sum().to(dev)

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.n_nsp.double()
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        return {
            "fr": self.n_flip / n if n > 0 else nan,
            "mad": self.sum_abs / n if n > 0 else nan,
            "bkl": self.sum_bkl / n if n > 0 else nan,
            "n_nsp": self.n_nsp.clone(),
            "n_total": self.n_total.clone(),
        }


class OracleQuality(Metric):
    """MQD and per-concept QD from oracle scores (all in [0, 1]) of inputs and counterfactuals."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, num_concepts: int = 0, threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.threshold = float(threshold)
        self.num_concepts = int(num_concepts)
        self.add_state("n_total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("n_sel", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("n_valid", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("sum_qd", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_cqd", default=torch.zeros(self.num_concepts, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_cqd", default=torch.zeros(self.num_concepts, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, qs_input, qs_cf, concepts_input=None, concepts_cf=None) -> None:
        """``qs_*``: (B,) overall scores; ``concepts_*``: (B, C) concept scores, NaN where unknown."""
        q_in, q_cf = _vec(qs_input), _vec(qs_cf)
        finite = torch.isfinite(q_in) & torch.isfinite(q_cf)
        keep = (q_in < self.threshold) & finite
        dev = self.n_total.device
        self.n_total += len(q_in)
        self.n_valid += int(finite.sum())
        self.n_sel += int(keep.sum())
        self.sum_qd += (q_cf[keep] - q_in[keep]).sum().to(dev)
        if self.num_concepts and concepts_input is not None and concepts_cf is not None:
            c_in = torch.as_tensor(concepts_input, dtype=torch.float64).reshape(len(q_in), -1)[keep]
            c_cf = torch.as_tensor(concepts_cf, dtype=torch.float64).reshape(len(q_in), -1)[keep]
            qd = c_cf - c_in
            ok = torch.isfinite(qd)
            self.sum_cqd += torch.where(ok, qd, torch.zeros_like(qd)).sum(0).to(dev)
            self.n_cqd += ok.sum(0).to(dev)

    def compute(self) -> dict[str, torch.Tensor]:
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        cqd = torch.where(self.n_cqd > 0, self.sum_cqd / self.n_cqd.clamp(min=1), torch.full_like(self.sum_cqd, float("nan")))
        return {
            # undefined (NaN, shown as n/a) when no input has finite oracle scores: 0 would claim a measurement
            "mqd": self.sum_qd / self.n_total if self.n_valid > 0 else nan,
            "mqd_selected": self.sum_qd / self.n_sel if self.n_sel > 0 else nan,
            "qd_concepts": cqd,
            "n_selected": self.n_sel.clone(),
            "n_total": self.n_total.clone(),
            "n_valid": self.n_valid.clone(),
        }
