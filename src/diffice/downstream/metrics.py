"""The study's numbers beyond accuracy, balanced accuracy and AUROC (those are
:mod:`diffice.metrics.classification`, exact, with ties): per-anomaly AUROC, mean ± sd over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from diffice.metrics.classification import auroc


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
