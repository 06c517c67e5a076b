"""Accuracy, balanced accuracy (the mean over the classes present in the truth of the fraction
predicted right) and AUROC, the ones the guide's report, the oracle and the downstream study use.
AUROC is exact: the Mann–Whitney statistic with scipy's average ranks, in float64, so a tied pair
counts one half (a constant scorer gives 0.5); NaN when a class is empty. (torchmetrics'
``binary_auroc`` computes the same area in float32, up to 1e-7 from it.)
"""

from __future__ import annotations

import math

import numpy as np


def _flat(*arrays) -> list[np.ndarray]:
    return [np.asarray(a.detach().cpu() if hasattr(a, "detach") else a).reshape(-1) for a in arrays]


def accuracy(y_true, y_pred) -> float:
    """Fraction of predictions equal to the truth (NaN for no frame)."""
    y_true, y_pred = _flat(y_true, y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else math.nan


def balanced_accuracy(y_true, y_pred) -> float:
    """The mean over the classes present in ``y_true`` of the fraction of that class predicted right."""
    y_true, y_pred = _flat(y_true, y_pred)
    classes = np.unique(y_true)
    if len(classes) == 0:
        return math.nan
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))


def auroc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` (higher = more likely positive) for binary ``labels``
    (1 positive, 0 negative): P(score of a positive > score of a negative) + P(tie) / 2."""
    from scipy.stats import rankdata

    s, y = _flat(scores, labels)
    s, y = s.astype(np.float64), y.astype(bool)
    if len(s) != len(y):
        raise ValueError(f"auroc: {len(s)} scores and {len(y)} labels")
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    if not np.isfinite(s).all():
        raise ValueError("auroc: scores must be finite")
    ranks = rankdata(s)  # average ranks: ties share their mean rank
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))
