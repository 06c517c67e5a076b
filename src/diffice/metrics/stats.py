"""Intervals and paired tests for every rate and mean diffice reports.

One place for the statistics that tables, reports, ``metrics.json`` and ``diffice compare`` show:

- a **rate** k of n (flip ratio, frames closer to the target, adversarial flags, reader answers):
  the exact two-sided Clopper–Pearson interval (conservative: at least the nominal coverage for
  every true rate; 0 of 10 gives [0, 0.308], 10 of 10 [0.692, 1], 5 of 10 [0.187, 0.813]);
- a **mean over frames** (MAD, BKL, MQD, SonoSim, Dice, distances): the percentile bootstrap
  (2,000 resamples of the frames, seeded, so a file recomputed from the same frames is
  byte-identical); with fewer than 2 values there is no interval;
- a **mean over seeds** (the downstream study: 3 seeds): Student's t interval, which is wide for
  3 seeds (t = 4.30) and says so honestly;
- **paired** outcomes of two runs on the same frames: the exact McNemar test (a two-sided
  binomial test on the discordant pairs) for yes/no outcomes, the Wilcoxon signed-rank test
  and a bootstrap interval of the mean difference for numbers.

All intervals are 95 % (``LEVEL``). An interval is a dict ``{value, low, high, n, method}``
(``value`` the point estimate; ``low``/``high`` None when it cannot be formed) so a JSON file
carries how it was made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2000
RATE_METHOD = "Clopper-Pearson"
MEAN_METHOD = f"bootstrap percentile ({BOOTSTRAP_RESAMPLES} resamples)"
SEED_METHOD = "Student t over seeds"


def _finite(values: Sequence) -> np.ndarray:
    a = np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return a[np.isfinite(a)]


def clopper_pearson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact two-sided interval of a binomial proportion k / n (n >= 1): scipy's
    ``binomtest(k, n).proportion_ci(level, "exact")`` (0 for k = 0 and 1 for k = n exactly)."""
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(level, "exact")
    return float(ci.low), float(ci.high)


def rate_interval(k: int, n: int, level: float = LEVEL) -> dict:
    """``k`` of ``n`` as a rate with its Clopper–Pearson interval (value and bounds None when n = 0)."""
    k, n = int(k), int(n)
    if not 0 <= k <= n:
        raise ValueError(f"a rate needs 0 <= k <= n, got {k} of {n}")
    if n == 0:
        return {"value": None, "low": None, "high": None, "n": 0, "k": 0, "method": RATE_METHOD}
    lo, hi = clopper_pearson(k, n, level)
    return {"value": k / n, "low": lo, "high": hi, "n": n, "k": k, "method": RATE_METHOD}


def binomial_summary(k: int, n: int, level: float = LEVEL) -> dict:
    """k of n with its fraction, Clopper–Pearson interval and two-sided binomial test against 0.5."""
    from scipy.stats import binomtest

    lo, hi = clopper_pearson(k, n, level)
    return {"k": k, "n": n, "fraction": k / n, "ci_low": lo, "ci_high": hi, "p_value": float(binomtest(k, n, 0.5).pvalue)}


def mean_interval(values: Sequence, level: float = LEVEL, seed: int = 0,
                  resamples: int = BOOTSTRAP_RESAMPLES, statistic=np.mean) -> dict:
    """Mean of the finite ``values`` with a percentile-bootstrap interval (seeded: reproducible).

    ``statistic`` maps an array (..., n) to its summary along the last axis (default the mean)."""
    a = _finite(values)
    n = len(a)
    out = {"value": float(statistic(a)) if n else None, "low": None, "high": None, "n": n, "method": MEAN_METHOD}
    if n < 2:
        return out
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    stats = np.asarray(statistic(a[idx], axis=-1), dtype=np.float64)
    alpha = 1.0 - level
    out["low"], out["high"] = (float(v) for v in np.quantile(stats, [alpha / 2, 1 - alpha / 2]))
    return out


def ratio_interval(numerators: Sequence, denominators: Sequence, level: float = LEVEL, seed: int = 0,
                   resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """A pooled ratio Σ num / Σ den over frames (e.g. pooled Dice: Σ 2|A∩B| / Σ (|A|+|B|)) with a
    percentile-bootstrap interval over frames."""
    a = np.asarray(numerators, dtype=np.float64)
    b = np.asarray(denominators, dtype=np.float64)
    n = len(a)
    total = b.sum()
    out = {"value": float(a.sum() / total) if n and total > 0 else None, "low": None, "high": None, "n": n,
           "method": MEAN_METHOD.replace("bootstrap", "bootstrap of the pooled ratio")}
    if n < 2 or total <= 0:
        return out
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    den = b[idx].sum(1)
    stats = a[idx].sum(1)[den > 0] / den[den > 0]
    alpha = 1.0 - level
    out["low"], out["high"] = (float(v) for v in np.quantile(stats, [alpha / 2, 1 - alpha / 2]))
    return out


def seed_interval(values: Sequence, level: float = LEVEL) -> dict:
    """Mean over seeds (or any few independent repeats) with Student's t interval."""
    from scipy.stats import t

    a = _finite(values)
    n = len(a)
    out = {"value": float(a.mean()) if n else None, "low": None, "high": None, "n": n, "method": SEED_METHOD}
    if n < 2:
        return out
    se = a.std(ddof=1) / math.sqrt(n)  # scipy gives NaN for a zero scale: seeds that all agree give a point
    out["low"], out["high"] = (float(v) for v in (t.interval(level, n - 1, loc=a.mean(), scale=se) if se > 0 else (a.mean(),) * 2))
    return out


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Exact McNemar test of paired yes/no outcomes: ``a_only`` frames yes in A only, ``b_only`` in B only;
    p is the two-sided binomial test of a_only against a_only + b_only at 0.5 (1.0 with no discordant pair)."""
    from scipy.stats import binomtest

    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError("paired outcomes need the same frames on both sides")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    d = a_only + b_only
    p = float(binomtest(a_only, d, 0.5).pvalue) if d else 1.0
    return {"n": int(a.size), "a": int(a.sum()), "b": int(b.sum()), "a_only": a_only, "b_only": b_only,
            "both": int((a & b).sum()), "p_value": p, "test": "exact McNemar"}


def paired_difference(a: Sequence, b: Sequence, level: float = LEVEL, seed: int = 0) -> dict:
    """Paired numbers (frames finite on both sides): mean of b − a with a bootstrap interval and the
    two-sided Wilcoxon signed-rank p-value (1.0 when every difference is 0)."""
    from scipy.stats import wilcoxon

    x = np.asarray([np.nan if v is None else float(v) for v in a], dtype=np.float64)
    y = np.asarray([np.nan if v is None else float(v) for v in b], dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError("paired values need the same frames on both sides")
    ok = np.isfinite(x) & np.isfinite(y)
    d = y[ok] - x[ok]
    out = mean_interval(d, level=level, seed=seed)
    out.update(mean_a=float(x[ok].mean()) if ok.any() else None, mean_b=float(y[ok].mean()) if ok.any() else None,
               test="Wilcoxon signed-rank")
    out["p_value"] = float(wilcoxon(d).pvalue) if len(d) and np.any(d != 0) else (1.0 if len(d) else None)
    return out


def fmt_interval(iv: dict | None, digits: int = 3, percent: bool = False) -> str:
    """``0.875 [0.710, 0.965]`` (or ``–`` / the bare value when no interval could be formed)."""
    if not iv or iv.get("value") is None:
        return "–"
    scale, unit = (100.0, " %") if percent else (1.0, "")
    d = 0 if percent and digits >= 3 else digits
    text = f"{iv['value'] * scale:.{d}f}{unit}"
    if iv.get("low") is not None and iv.get("high") is not None:
        text += f" [{iv['low'] * scale:.{d}f}, {iv['high'] * scale:.{d}f}]"
    return text


def fmt_rate(iv: dict | None, sep: str = " of ", percent: bool = False, missing: str = "–") -> str:
    """A rate interval as ``14 of 16 (0.88 [0.62, 0.98])`` (``percent``: ``(88 % [62, 98])``; ``sep``
    e.g. " / "); ``missing`` when it holds no count."""
    if not iv or not iv.get("n"):
        return missing
    return f"{iv['k']}{sep}{iv['n']} ({fmt_interval(iv, 3 if percent else 2, percent=percent)})"


def fmt_p(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return f"{p:.2g}" if p >= 1e-4 else "< 1e-4"
