"""A downstream study's summary (``summary.csv``: mean, sd, n and 95 % interval per model, task,
condition and metric, and the paired gains) and its markdown tables (``table.md``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from diffice.downstream.frames import FrameSet
from diffice.downstream.metrics import format_mean_sd, mean_sd
from diffice.downstream.rows import PER_ANOMALY, REAL, ROWS, SYNTH, UNITS, UPPER, read_rows_checked
from diffice.downstream.rows import number as _num
from diffice.errors import UserError

SUMMARY = "summary.csv"
TABLE = "table.md"

def _values(rows: list[dict], model: str, task: str, condition: str, metric: str) -> dict[int, float]:
    return {int(r["seed"]): _num(r.get(metric)) for r in rows
            if r["model"] == model and r["task"] == task and r["condition"] == condition}


def _gain(rows, model, task, metric) -> list[float]:
    """Per-seed (paired) differences real+synthetic - real."""
    a, b = _values(rows, model, task, REAL, metric), _values(rows, model, task, SYNTH, metric)
    return [b[s] - a[s] for s in sorted(set(a) & set(b))]


MIN_GAP = 0.05  # AUROC: a seed whose upper bound is not this far above MSP has no gap worth a share


def gap_closed(rows, model, metric="auroc", min_gap: float = MIN_GAP) -> list[float]:
    """Per seed, the share of the anomaly gap between the MSP baseline and the upper bound that the
    synthetic arm closes: (synthetic − MSP) / (upper − MSP); seeds whose upper bound is less than
    ``min_gap`` above the baseline are left out (no gap to close: the share would be noise)."""
    msp, syn = _values(rows, model, "anomaly", REAL, metric), _values(rows, model, "anomaly", SYNTH, metric)
    up = _values(rows, model, "anomaly", UPPER, metric)
    out = []
    for s in sorted(set(msp) & set(syn) & set(up)):
        gap = up[s] - msp[s]
        if math.isfinite(gap) and gap >= min_gap and math.isfinite(syn[s]):
            out.append((syn[s] - msp[s]) / gap)
    return out


def _metrics_of(rows: list[dict]) -> list[str]:
    names = ["accuracy", "balanced_accuracy", "auroc"]
    extra = sorted({k for r in rows for k in r if k.startswith(PER_ANOMALY)})
    return names + extra


def summarize(rows: list[dict], models: Sequence[str]) -> list[dict]:
    """Long-format summary: model, task, condition (or 'gain'), metric, mean, sd, n."""
    out = []
    metrics = _metrics_of(rows)
    for model in models:
        for _, gives in UNITS:
            for task, condition in gives:
                for metric in metrics:
                    vals = list(_values(rows, model, task, condition, metric).values())
                    mean, sd, n = mean_sd(vals)
                    if n:
                        out.append({"model": model, "task": task, "condition": condition, "metric": metric,
                                    "mean": mean, "sd": sd, "n": n, **_ci(vals)})
        for task in ("plane", "anomaly"):
            for metric in metrics:
                gain = _gain(rows, model, task, metric)
                mean, sd, n = mean_sd(gain)
                if n:
                    out.append({"model": model, "task": task, "condition": "gain", "metric": metric,
                                "mean": mean, "sd": sd, "n": n, **_ci(gain)})
        for metric in metrics:
            closed = gap_closed(rows, model, metric)
            mean, sd, n = mean_sd(closed)
            if n:
                out.append({"model": model, "task": "anomaly", "condition": "gap closed", "metric": metric,
                            "mean": mean, "sd": sd, "n": n, **_ci(closed)})
    return out


def _ci(values: list[float]) -> dict:
    """95 % Student t interval over seeds (summary.csv's ci_low, ci_high; empty for one seed)."""
    from diffice.metrics.stats import seed_interval

    iv = seed_interval(values)
    return {"ci_low": iv["low"], "ci_high": iv["high"]}


def table_markdown(rows: list[dict], models: Sequence[str] | None = None) -> str:
    """The two markdown tables (per model; per anomaly), cells "mean [95 % t interval] (n seeds)"."""
    rows = [{**r, "seed": int(r["seed"])} for r in rows]
    if models is None:
        models = list(dict.fromkeys(r["model"] for r in rows))

    def cell(model, task, condition, metric):
        return format_mean_sd(_values(rows, model, task, condition, metric).values())

    upper = any(r["condition"] == UPPER for r in rows)
    head = ["model", "plane acc (real)", "plane acc (+synthetic)", "gain", "plane bal. acc (real)",
            "plane bal. acc (+synthetic)", "anomaly AUROC (MSP baseline)", "anomaly AUROC (+synthetic)", "gain"]
    head += ["anomaly AUROC (upper bound: rendered abnormal)", "gap closed"] if upper else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in models:
        cells = [m, cell(m, "plane", REAL, "accuracy"), cell(m, "plane", SYNTH, "accuracy"),
                 format_mean_sd(_gain(rows, m, "plane", "accuracy"), signed=True),
                 cell(m, "plane", REAL, "balanced_accuracy"), cell(m, "plane", SYNTH, "balanced_accuracy"),
                 cell(m, "anomaly", REAL, "auroc"), cell(m, "anomaly", SYNTH, "auroc"),
                 format_mean_sd(_gain(rows, m, "anomaly", "auroc"), signed=True)]
        if upper:
            cells += [cell(m, "anomaly", UPPER, "auroc"), format_mean_sd(gap_closed(rows, m), signed=True)]
        lines.append("| " + " | ".join(cells) + " |")
    anomalies = sorted({k[len(PER_ANOMALY):] for r in rows for k in r if k.startswith(PER_ANOMALY)
                        and not math.isnan(_num(r[k]))})
    if anomalies:
        arms = [(REAL, "MSP"), (SYNTH, "+synthetic")] + ([(UPPER, "upper")] if upper else [])
        head2 = ["model"] + [f"{a} ({name})" for a in anomalies for _, name in arms]
        lines += ["", "Per-anomaly AUROC (each anomaly's test frames against the normal test frames):", "",
                  "| " + " | ".join(head2) + " |", "|" + "---|" * len(head2)]
        for m in models:
            cells = [m] + [cell(m, "anomaly", c, PER_ANOMALY + a) for a in anomalies for c, _ in arms]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _facts(settings: dict | None, sets: dict[str, FrameSet] | None, rows: list[dict]) -> str:
    parts = []
    if settings:
        parts.append(f"{settings['image_size'][0]}x{settings['image_size'][1]} frames, {settings['steps']} steps of "
                     f"{settings['batch_size']} frames, lr {settings['lr']} ({settings['schedule']}), "
                     f"seeds {', '.join(str(s) for s in settings['seeds'])}")
        own = [m for m in settings.get("recipes") or {} if m in settings.get("models", ())]
        if own:
            parts.append(f"own recipes (downstream.recipes) for {', '.join(own)}")
    n = {}
    for r in rows:
        if r["task"] == "plane" and r["condition"] == REAL:
            n.setdefault("real", int(_num(r["n_train"])))
        if r["task"] == "plane" and r["condition"] == SYNTH:
            n.setdefault("synth_normal", int(_num(r["n_train_synthetic"])))
        if r["task"] == "anomaly" and r["condition"] == SYNTH:
            n.setdefault("anomaly", (int(_num(r["n_train_real"])), int(_num(r["n_train_synthetic"]))))
        if r["task"] == "anomaly" and r["condition"] == UPPER:
            n.setdefault("upper", int(_num(r["n_train"])))
    if "real" in n:
        parts.append(f"{n['real']} real training frames")
    if "synth_normal" in n:
        parts.append(f"+ {n['synth_normal']} synthetic normal frames for planes")
    if "anomaly" in n:
        parts.append(f"anomaly classifier on {n['anomaly'][0]} real + {n['anomaly'][1]} synthetic frames")
    if "upper" in n and "real" in n:
        parts.append(f"upper bound on {n['real']} real + {n['upper'] - n['real']} rendered abnormal frames of training patients")
    if sets:
        ab = sets["abnormal_test"]
        per = ", ".join(f"{a} {sum(x == a for x in ab.anomaly)}" for a in ab.anomalies())
        parts.append(f"test: {len(sets['real_test'])} real normal frames, {len(ab)} real-rendered abnormal ({per})")
    return ("; ".join(parts) + ".") if parts else ""


def write_table(out: str | Path, rows: list[dict] | None = None, *, models: Sequence[str] | None = None,
                settings: dict | None = None, sets: dict[str, FrameSet] | None = None) -> str:
    """Write ``out/table.md`` (the rows of ``out/rows.csv`` when ``rows`` is None) and return its markdown:
    the per-model table, the per-anomaly table and a line of what was trained on what."""
    from diffice.io import atomic_write_text

    out = Path(out)
    if rows is None:
        rows, damaged = read_rows_checked(out)
        if damaged:
            raise UserError(f"{out / ROWS}: line {damaged[0][0]} is damaged ({damaged[0][1]}); rerun the study to redo it")
        if not rows:
            raise UserError(f"{out / ROWS}: no rows to tabulate; run the study first")
    body = table_markdown(rows, models)
    facts = _facts(settings, sets, rows)
    text = body + ("\n" + facts + "\n" if facts else "")
    atomic_write_text(out / TABLE, text)
    return text
