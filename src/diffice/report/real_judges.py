"""Judges of counterfactuals of real frames, from the records: the official SonoNet-16 and biometry.

On real data (``hc18-faults``) two judges nobody here trained say whether a counterfactual is a
better head scan of the same head:

- **SonoNet-16** (Baumgartner et al. 2017, the authors' weights): is it called a brain standard
  plane? Rates for inputs, counterfactuals and clean targets, and — the question a repair answers
  — of the inputs it does *not* call one, how many counterfactuals it does (``brain_rescued``).
- **Head biometry**: the head circumference of an ellipse fitted to the segmented head
  (:mod:`diffice.metrics.biometry`), in mm. A counterfactual must keep it: the median of
  |HC(x_c) − HC(target)| / HC(target), both measured by the same segmenter, beside the input's
  own figure; and the segmenter's HC of the clean target against the annotators' (its ceiling).

Every value comes with its N and a 95 % interval (rates Clopper–Pearson, medians and means a
seeded percentile bootstrap over frames); the keys are absent when the records carry no such
fields. A phantom run has a clean target too, so it carries the head Dice against it, but neither
judge of real frames: the report shows their section only where a run has one (``REAL_ONLY``).
"""

from __future__ import annotations

import math

import numpy as np

from diffice.metrics.stats import mean_interval, rate_interval
from diffice.report.records import num

# metrics.json key -> (title, kind); kind: rate (a share of frames) | pct (median % error) | dice.
# HC error = |HC(a) − HC(b)| / HC(b), both HCs from the same segmenter except the annotated one.
REAL_COLUMNS = {
    "brain_input": ("SonoNet brain plane: input", "rate"),
    "brain_cf": ("SonoNet brain plane: counterfactual", "rate"),
    "brain_target": ("SonoNet brain plane: clean target", "rate"),
    "brain_rescued": ("SonoNet: counterfactual called brain, of inputs not called", "rate"),
    "hc_error_cf": ("HC error, counterfactual vs target: median %", "pct"),
    "hc_error_input": ("HC error, input vs target: median %", "pct"),
    "hc_error_target_annotated": ("HC error, target vs annotated HC: median %", "pct"),
    "hc_error_cf_annotated": ("HC error, counterfactual vs annotated HC: median %", "pct"),
    "head_dice_target_cf": ("head Dice, counterfactual vs target (segmenter)", "dice"),
    "head_dice_target_input": ("head Dice, input vs target (segmenter)", "dice"),
}


# the keys only a judge of real frames gives: SonoNet's calls, HC in mm (needs the frames' pixel size)
REAL_ONLY = tuple(k for k in REAL_COLUMNS if k.startswith(("brain_", "hc_error_")))


def has_real_judges(intervals: dict) -> bool:
    """Whether a run's intervals hold a judge of real frames (not only the head Dice against a target)."""
    return any(k in (intervals or {}) for k in REAL_ONLY)


def _rel_errors(records: list[dict], key: str, ref: str) -> list[float]:
    out = []
    for r in records:
        a, b = num(r.get(key)), num(r.get(ref))
        if math.isfinite(a) and math.isfinite(b) and b > 0:
            out.append(100.0 * abs(a - b) / b)
    return out


def real_intervals(records: list[dict]) -> dict:
    """{key: interval dict} of the real-frame judges (see ``REAL_COLUMNS``); {} without them."""
    out: dict[str, dict] = {}
    for name in ("input", "cf", "target"):
        calls = [bool(r[f"brain_{name}"]) for r in records if r.get(f"brain_{name}") is not None]
        if calls:
            out[f"brain_{name}"] = rate_interval(sum(calls), len(calls))
    missed = [r for r in records if r.get("brain_input") is False and r.get("brain_cf") is not None]
    if "brain_input" in out:
        out["brain_rescued"] = rate_interval(sum(bool(r["brain_cf"]) for r in missed), len(missed))
    for key, a, b in (("hc_error_cf", "hc_cf_mm", "hc_target_mm"), ("hc_error_input", "hc_input_mm", "hc_target_mm"),
                      ("hc_error_target_annotated", "hc_target_mm", "hc_annotated_mm"),
                      ("hc_error_cf_annotated", "hc_cf_mm", "hc_annotated_mm")):
        errs = _rel_errors(records, a, b)
        if errs:
            out[key] = mean_interval(errs, statistic=np.median)
    for key in ("head_dice_target_cf", "head_dice_target_input"):
        vals = [num(r[key]) for r in records if r.get(key) is not None]
        if vals:
            out[key] = mean_interval(vals)
    return {k: v for k, v in out.items() if v["n"]}


def real_metrics(intervals: dict) -> dict:
    """The point values of :func:`real_intervals` for metrics.json's top level (rates as fractions,
    HC errors as median %), with their N."""
    out: dict = {}
    for key in REAL_COLUMNS:
        iv = intervals.get(key)
        if iv is not None:
            out[key] = iv["value"]
            out[f"{key}_n"] = iv["n"]
    return out
