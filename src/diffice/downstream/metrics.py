"""The study's numbers: accuracy, balanced accuracy, AUROC, per-anomaly AUROC, mean ± sd over seeds.

AUROC is exact: the Mann-Whitney statistic with average ranks, so tied scores count one half
(a constant scorer gives 0.5); it is NaN when either class is empty.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    if len(y_true) == 0:
        return math.nan
    return float(np.mean(y_true == y_pred))


def balanced_accuracy(y_true, y_pred) -> float:
    """The mean over the classes present in ``y_true`` of the fraction of that class predicted right."""
    y_true, y_pred = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    classes = np.unique(y_true)
    if len(classes) == 0:
        return math.nan
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))


def auroc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` (higher = more likely positive) for binary ``labels``
    (1 positive, 0 negative): P(score of a positive > score of a negative) + P(tie) / 2."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
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


def per_anomaly_auroc(scores, anomaly: Sequence[str]) -> dict[str, float]:
    """For each anomaly name: AUROC of its frames against the normal ones ('' = normal)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    names = np.asarray([str(a or "") for a in anomaly], dtype=object)
    normal = names == ""
    out = {}
    for name in sorted({a for a in names.tolist() if a}):
        keep = normal | (names == name)
        out[name] = auroc(s[keep], (names[keep] == name).astype(int))
    return out


def mean_sd(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, count) of the finite values; sd is NaN for fewer than two."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return math.nan, math.nan, 0
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else math.nan
    return float(v.mean()), sd, len(v)


def format_mean_sd(values: Iterable[float], digits: int = 3, signed: bool = False) -> str:
    """"0.812 [0.760, 0.864] (3)": mean over seeds, its 95 % Student t interval (number of seeds);
    "n/a" when there is no value (:func:`diffice.metrics.stats.seed_interval`)."""
    from diffice.metrics.stats import seed_interval

    iv = seed_interval(list(values))
    if iv["n"] == 0:
        return "n/a"
    f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    if iv["low"] is None:
        return f"{f.format(iv['value'])} ({iv['n']})"
    return f"{f.format(iv['value'])} [{f.format(iv['low'])}, {f.format(iv['high'])}] ({iv['n']})"
