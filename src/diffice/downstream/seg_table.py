"""The head-measurement study's numbers: ``summary.csv`` and ``table.md``.

Per N and arm, over its seeds and the test frames: the mean HC absolute error (mm) and the mean
head Dice, each with two 95 % intervals from :mod:`diffice.metrics.stats` — the percentile
bootstrap over test frames (of each frame's value averaged over the seeds: the spread of unseen
fetuses) and Student's t over the seeds' means (the spread of trainings and of which N frames were
labelled; wide for 3 seeds) — and how often no head was found.

The paired difference synthetic − augmentation only, per N: each (seed, test frame) pairs the two
arms' values (same seed: same N real frames, same initial weights); the pairs' differences averaged
over the seeds per frame give the mean with its bootstrap interval over frames and the Wilcoxon
signed-rank p (:func:`~diffice.metrics.stats.paired_difference`), and their per-seed means give the
t interval over seeds (:func:`~diffice.metrics.stats.seed_interval`). The relative change is the
mean difference over the augmentation-only arm's mean. **Target** (issue 36): at N = 50 and 100
the synthetic pairs lower the HC error by at least 15 % and both intervals of the difference lie
below 0.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from diffice.downstream.rows import REAL, SYNTH, number

SUMMARY = "summary.csv"
TABLE = "table.md"
DIFF = "synthetic - augmentation"
METRICS = ("hc_abs_mm", "dice")
TARGET = -0.15  # the relative change of the HC error the synthetic pairs should reach (at most)
NUMERIC = ("seed", "dice", "hc_mm", "hc_annotated_mm", "hc_abs_mm", "head_found", "n_train_real",
           "n_train_synthetic", "steps", "train_seconds")


def numeric_rows(rows: list[dict]) -> list[dict]:
    """``rows`` with their number columns as floats (``seed`` an int)."""
    out = []
    for r in rows:
        r = {**r, **{k: number(r.get(k)) for k in NUMERIC}}
        r["seed"] = int(r["seed"])
        out.append(r)
    return out


def _by_seed(rows: list[dict], label: str, arm: str, metric: str) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for r in rows:
        if r["labelled"] == label and r["arm"] == arm:
            out.setdefault(r["seed"], {})[r["frame"]] = r[metric]
    return out


def _frame_means(per_seed: dict[int, dict[str, float]], seeds, frames) -> list[float]:
    """Each frame's value averaged over ``seeds``."""
    return [float(np.nanmean([per_seed[s][f] for s in seeds])) for f in frames]


def _iv(prefix: str, iv: dict) -> dict:
    return {f"{prefix}value": iv["value"], f"{prefix}low": iv["low"], f"{prefix}high": iv["high"], f"{prefix}n": iv["n"]}


def arm_summary(rows: list[dict], label: str, arm: str, frames: list[str]) -> dict | None:
    """One arm of one N: per metric the mean with its frame-bootstrap and seed-t intervals; None without rows."""
    from diffice.metrics.stats import mean_interval, seed_interval

    per = {m: _by_seed(rows, label, arm, m) for m in (*METRICS, "head_found")}
    seeds = sorted(per["dice"])
    if not seeds:
        return None
    out = {"labelled": label, "arm": arm, "seeds": len(seeds)}
    for m in METRICS:
        out[m] = {"frames": mean_interval(_frame_means(per[m], seeds, frames)),
                  "seeds": seed_interval([np.nanmean(list(per[m][s].values())) for s in seeds])}
    found = [v for s in seeds for v in per["head_found"][s].values()]
    out["no_head"], out["measured"] = int(sum(v == 0 for v in found)), len(found)
    return out


def paired_summary(rows: list[dict], label: str, frames: list[str]) -> dict | None:
    """Synthetic − augmentation only of one N, paired by seed and test frame; None without a seed of both arms."""
    from diffice.metrics.stats import paired_difference, seed_interval

    out = {"labelled": label, "arm": DIFF}
    for m in METRICS:
        aug, syn = _by_seed(rows, label, REAL, m), _by_seed(rows, label, SYNTH, m)
        seeds = sorted(set(aug) & set(syn))
        if not seeds:
            return None
        out["seeds"] = len(seeds)
        frame = paired_difference(_frame_means(aug, seeds, frames), _frame_means(syn, seeds, frames))
        seed = seed_interval([np.nanmean([syn[s][f] - aug[s][f] for f in frames]) for s in seeds])
        base = frame["mean_a"]
        out[m] = {"frames": frame, "seeds": seed,
                  "relative": frame["value"] / base if base and frame["value"] is not None else math.nan}
    hc = out["hc_abs_mm"]
    below = [iv["high"] is not None and iv["high"] < 0 for iv in (hc["frames"], hc["seeds"])]
    out["target_met"] = bool(hc["relative"] <= TARGET and all(below))
    return out


def summarize(rows: list[dict], labels: list[str], frames: list[str]) -> tuple[list[dict], list[dict]]:
    """(per-arm summaries, paired summaries) of ``labels``, and the long ``summary.csv`` rows."""
    arms = [a for lab in labels for arm in (REAL, SYNTH) if (a := arm_summary(rows, lab, arm, frames))]
    pairs = [p for lab in labels if (p := paired_summary(rows, lab, frames))]
    return arms, pairs


def summary_rows(arms: list[dict], pairs: list[dict]) -> list[dict]:
    """Long format: labelled, arm (or the difference), metric, seeds, then the frame-bootstrap and
    seed-t intervals (and, for the difference, the Wilcoxon p, the relative change and the target)."""
    out = []
    for a in arms:
        for m in METRICS:
            out.append({"labelled": a["labelled"], "arm": a["arm"], "metric": m, "seeds": a["seeds"],
                        **_iv("frames_", a[m]["frames"]), **_iv("seeds_", a[m]["seeds"]),
                        "no_head": a["no_head"], "measured": a["measured"]})
    for p in pairs:
        for m in METRICS:
            out.append({"labelled": p["labelled"], "arm": DIFF, "metric": m, "seeds": p["seeds"],
                        **_iv("frames_", p[m]["frames"]), **_iv("seeds_", p[m]["seeds"]),
                        "p_wilcoxon": p[m]["frames"]["p_value"], "relative": p[m]["relative"],
                        "target_met": p["target_met"] if m == "hc_abs_mm" else None})
    return out


def _cell(iv: dict, digits: int, signed: bool = False) -> str:
    if iv.get("value") is None or not math.isfinite(iv["value"]):
        return "n/a"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    if iv.get("low") is None:
        return f.format(iv["value"])
    return f"{f.format(iv['value'])} [{f.format(iv['low'])}, {f.format(iv['high'])}]"


def table_markdown(arms: list[dict], pairs: list[dict]) -> str:
    """The per-arm table and the paired table."""
    from diffice.metrics.stats import fmt_p

    name = {REAL: "augmentation only", SYNTH: "+ synthetic pairs"}
    head = ["N", "arm", "seeds", "HC abs. error, mm (frames)", "HC abs. error (seeds)", "head Dice (frames)",
            "head Dice (seeds)", "no head found"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in arms:
        lines.append("| " + " | ".join([a["labelled"], name[a["arm"]], str(a["seeds"]),
                                        _cell(a["hc_abs_mm"]["frames"], 2), _cell(a["hc_abs_mm"]["seeds"], 2),
                                        _cell(a["dice"]["frames"], 3), _cell(a["dice"]["seeds"], 3),
                                        f"{a['no_head']} of {a['measured']}"]) + " |")
    head = ["N", "seeds", "Δ HC error, mm (frames)", "Wilcoxon p", "Δ HC error (seeds)", "relative change",
            "Δ Dice (frames)", "Δ Dice (seeds)", "target: ≥ 15 % lower, both intervals < 0"]
    lines += ["", "Paired difference, synthetic − augmentation only (same seed: same real frames and initial weights):",
              "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in pairs:
        hc, d = p["hc_abs_mm"], p["dice"]
        rel = f"{100 * hc['relative']:+.1f} %" if math.isfinite(hc["relative"]) else "n/a"
        lines.append("| " + " | ".join([p["labelled"], str(p["seeds"]), _cell(hc["frames"], 2, True),
                                        fmt_p(hc["frames"]["p_value"]), _cell(hc["seeds"], 2, True), rel,
                                        _cell(d["frames"], 3, True), _cell(d["seeds"], 3, True),
                                        "met" if p["target_met"] else "not met"]) + " |")
    return "\n".join(lines) + "\n"


def _facts(rows: list[dict], st: dict, test, labels: list[str]) -> str:
    from diffice.metrics.biometry import head_circumference

    seg = st["segmenter"]
    parts = [f"{st['image_size'][0]}x{st['image_size'][1]} frames, segmenter {seg['arch']} on {seg['encoder']}, "
             f"{st['steps']} steps of {st['batch_size']} frames, lr {st['lr']} (warm-up, cosine), "
             f"augmentation {'on' if st['augment'] else 'off'} in both arms, synthetic share {st['synthetic_share']}"]
    for lab in labels:
        mine = [r for r in rows if r["labelled"] == lab]
        real = sorted({int(r["n_train_real"]) for r in mine})
        synth = sorted({int(r["n_train_synthetic"]) for r in mine if r["arm"] == SYNTH})
        if real:
            parts.append(f"N={lab}: {'/'.join(map(str, real))} real" + (f" + {'/'.join(map(str, synth))} synthetic" if synth else ""))
    floor = [abs(head_circumference(m, tuple(px)) - hc) for m, px, hc in zip(test.frames.masks, test.pixel_mm, test.hc_mm)]
    parts.append(f"test: {len(test.frames)} frames; the annotation masks themselves, measured the same way at this "
                 f"size, are {np.nanmean(floor):.2f} mm from the annotated HC on average (the measurement's floor)")
    return "; ".join(parts) + "."


def write_outputs(out: Path, rows: list[dict], st: dict, test) -> dict:
    """``summary.csv`` and ``table.md`` of ``rows``; returns ``{"rows", "summary", "table", "pairs"}``."""
    from diffice.io import atomic_write_text
    from diffice.runfolder import write_rows_csv

    rows = numeric_rows(rows)
    frames = list(test.frames.ids)
    arms, pairs = summarize(rows, st["labels"], frames)
    summary = summary_rows(arms, pairs)
    write_rows_csv(Path(out) / SUMMARY, summary)
    text = table_markdown(arms, pairs) + "\n" + _facts(rows, st, test, st["labels"]) + "\n"
    atomic_write_text(Path(out) / TABLE, text)
    return {"rows": rows, "summary": summary, "table": text, "pairs": pairs}
