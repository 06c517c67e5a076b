"""The paper's tables as markdown: Table 1 (one row per method) and Table 2 (one row per iteration).

Every rate and mean is shown with its 95 % interval from ``metrics.json``'s ``intervals``
(``0.875 [0.617, 0.984]``); a Fréchet distance below the documented N reads ``n/a (N a/b)``
with KID (mean ± subset std) beside it (:mod:`diffice.metrics.kid`, :mod:`diffice.metrics.stats`).
A KID that cannot be read as a distance carries a mark (``†`` noise-dominated, ``‡`` on FSD
features that are not SonoNet's) and the table a footnote saying why (:func:`kid_notes`).
"""

from __future__ import annotations

import math

from diffice.metrics.kid import kid_footnotes, kid_marks
from diffice.metrics.stats import fmt_interval, fmt_rate

METHOD_NAMES = {"diff-ice": "Diff-ICE", "diff-ice1": "Diff-ICE1", "diff-ice1-xt": "Diff-ICE1-xt", "dime": "DiME"}

QUALITY = [("fid", "FID ↓", 2), ("kid", "KID ↓", 4), ("fsd", "FSD ↓", 3), ("kid_fsd", "KID (FSD features) ↓", 4),
           ("sonosim", "SonoSim ↑", 3), ("mqd", "MQD ↑", 3), ("bkl", "BKL ↓", 3), ("mad", "MAD ↑", 3), ("fr", "FR ↑", 3)]


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    value = float(value)
    if value != 0 and abs(value) < 10 ** -digits:
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def method_name(method: str) -> str:
    return METHOD_NAMES.get(str(method), str(method))


FEATURES_NOTE = "FSD and SonoSim use features from: "


def fsd_features(m: dict) -> str | None:
    """A run's FSD feature source: ``fsd_features``, or (metrics.json of before) its note."""
    if m.get("fsd_features"):
        return str(m["fsd_features"])
    note = next((n for n in m.get("notes") or [] if str(n).startswith(FEATURES_NOTE)), None)
    return note[len(FEATURES_NOTE):].split("; ")[0] if note else None


def cell(m: dict, key: str, digits: int = 3, features: str | None = None) -> str:
    """A metric with its interval (``intervals[key]``), KID with its subset std (and its marks:
    :func:`~diffice.metrics.kid.kid_marks`; ``features``: the run's FSD features where ``m`` is one of
    its iterations), a Fréchet distance or ``n/a (N a/b)`` when it was not shown for too few frames."""
    value = m.get(key)
    if key in ("fid", "fsd") and value is None and m.get(f"{key}_n"):
        a, b = m[f"{key}_n"]
        return f"n/a (N {a}/{b})"
    if key.startswith("kid") and value is not None and m.get(f"{key}_std") is not None:
        marks = kid_marks(key, value, m[f"{key}_std"], features or fsd_features(m))
        return f"{fmt(value, digits)} ± {fmt(m[f'{key}_std'], digits)}" + (f" {marks}" if marks else "")
    iv = (m.get("intervals") or {}).get(key)
    if iv and iv.get("value") is not None:
        return fmt_interval(iv, digits)
    return fmt(value, digits)


def rate_cell(m: dict, key: str, k=None, n=None) -> str:
    """``k / n (rate [low, high])`` from ``intervals[key]`` (or the bare counts of older files)."""
    return fmt_rate((m.get("intervals") or {}).get(key), sep=" / ", missing=f"{k} / {n}" if n else "–")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table1_rows(metrics: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["Method"] + [t for _, t, _ in QUALITY] + ["Batch time (s)", "Total time (h)", "Memory (GB)"]
    rows = []
    for m in metrics:
        rows.append([method_name(m["method"])] + [cell(m, k, d) for k, _, d in QUALITY]
                    + [_batch_time(m), fmt(m.get("total_hours"), 2), fmt(m.get("peak_memory_gb"), 1)])
    return header, rows


def extra_rows(metrics: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Counts and ground truth: frames, NSP by guide, oracle-selected, flipped, NFE, phantom target L1, anatomy Dice."""
    header = ["Method", "Frames", "NSP (guide)", "QS_O<0.5", "Flipped (all frames)", "Adversarial", "NFE / frame",
              "L1 to target: input", "L1 to target: cf", "Closer (footprint)", "Closer (sector)"]
    structures: list[str] = []
    for m in metrics:
        structures += [k for k in (m.get("anatomy_dice") or {}) if k not in structures]
    header += [f"Dice {k} (input vs cf)" for k in structures]
    rows = []
    for m in metrics:
        adv = "–" if m.get("n_adversarial") is None else rate_cell(m, "adversarial_fraction", m["n_adversarial"], m["n_frames"])
        row = [method_name(m["method"]), str(m["n_frames"]), str(m.get("n_nsp_guide", "–")),
               str(m.get("n_oracle_selected", "–")), rate_cell(m, "flipped_all", m.get("n_flipped"), m["n_frames"]), adv,
               fmt(m.get("nfe_per_frame"), 1), cell(m, "target_l1_input"), cell(m, "target_l1_cf"),
               rate_cell(m, "closer_to_target", m.get("n_closer_to_target"), m.get("n_target")),
               rate_cell(m, "closer_sector", m.get("n_closer_sector"), m.get("n_target_sector"))]
        dice = m.get("anatomy_dice") or {}
        for k in structures:
            iv = (m.get("intervals") or {}).get(f"anatomy_dice_{k}")
            row.append(fmt_interval(iv) if iv else fmt(dice.get(k)))
        rows.append(row)
    return header, rows


def table2_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
    header = ["Iteration"] + [t for _, t, _ in QUALITY] + ["Frames running", "Batch time (s)", "Iteration time (h)"]
    features = fsd_features(metrics)
    rows = [[str(it["iteration"])] + [cell(it, k, d, features) for k, _, d in QUALITY]
            + [str(it.get("frames_running", "–")), _batch_time(it), fmt(it.get("iteration_hours"), 2)]
            for it in metrics.get("per_iteration") or []]
    return header, rows


def _batch_time(m: dict) -> str:
    text = fmt(m.get("batch_seconds_mean"), 1)
    if m.get("batch_seconds_std") is not None:
        text += " ± " + fmt(m.get("batch_seconds_std"), 1)
    return text


def qd_rows(metrics: list[dict]) -> tuple[list[str], list[list[str]]]:
    names: list[str] = []
    for m in metrics:
        names += [c for c in (m.get("qd") or {}) if c not in names]
    header = ["Method", "MQD (÷ all N)", "mean QD_O (selected)"] + [f"QD {c}" for c in names]
    rows = [[method_name(m["method"]), cell(m, "mqd"), cell(m, "mqd_selected")]
            + [fmt_interval(iv) if (iv := (m.get("intervals") or {}).get(f"qd_{c}")) else fmt((m.get("qd") or {}).get(c))
               for c in names] for m in metrics]
    return header, rows


def locality_rows(metrics: list[dict]) -> tuple[list[str], list[list[str]]] | None:
    """Where the change is (:mod:`diffice.metrics.locality`): pixels changed, the share of the squared
    change inside the fault's footprint and the PSNR to the input outside it (frames with a target)."""
    keys = ("change_changed_fraction", "change_in_footprint", "change_psnr_outside")
    if not any(k in (m.get("intervals") or {}) for m in metrics for k in keys):
        return None
    header = ["Method", "pixels changed (> 2 grey levels)", "squared change inside the footprint", "PSNR outside the footprint (dB)"]
    if any("sparse_mask_fraction" in (m.get("intervals") or {}) for m in metrics):  # cf.sparse runs
        keys = (*keys, "sparse_mask_fraction", "flipped_dense")
        header += ["sparse mask (share of the frame)", "flipped before the refinement"]
    def cell(m: dict, k: str) -> str:
        iv = (m.get("intervals") or {}).get(k)
        if not iv:
            return "–"
        if k == "flipped_dense":
            return fmt_rate(iv, sep=" / ")
        return f"{fmt_interval(iv, 1 if k.endswith('outside') else 3)} (n {iv['n']})"

    rows = [[method_name(m["method"])] + [cell(m, k) for k in keys] for m in metrics]
    return header, rows


def real_rows(metrics: list[dict]) -> tuple[list[str], list[list[str]]] | None:
    """The real-frame judges (official SonoNet-16, head biometry; :mod:`diffice.report.real_judges`),
    when any run has them: one row per judge, one column per run. None for runs without a judge of
    real frames (a phantom run's head Dice against its target alone makes no such table)."""
    from diffice.report.real_judges import REAL_COLUMNS, has_real_judges

    if not any(has_real_judges(m.get("intervals") or {}) for m in metrics):
        return None
    header = ["Judge"] + [method_name(m["method"]) for m in metrics]
    rows = []
    for key, (title, kind) in REAL_COLUMNS.items():
        cells = []
        for m in metrics:
            iv = (m.get("intervals") or {}).get(key)
            if kind == "rate":
                cells.append(fmt_rate(iv, sep=" / "))
            elif kind == "pct":
                cells.append(f"{fmt_interval(iv, 1)} (n {iv['n']})" if iv else "–")
            else:
                cells.append(f"{fmt_interval(iv, 3)} (n {iv['n']})" if iv else "–")
        if any(c != "–" for c in cells):
            rows.append([title, *cells])
    for key, title in (("kid_target_input", "KID vs the clean targets (Inception): input"),
                       ("kid_target_cf", "KID vs the clean targets (Inception): counterfactual"),
                       ("kid_fsd_target_input", "KID vs the clean targets (SonoNet features): input"),
                       ("kid_fsd_target_cf", "KID vs the clean targets (SonoNet features): counterfactual")):
        cells = [f"{cell(m, key, 4)} (n {m.get(key.split('_target')[0] + '_target_n')})" if m.get(key) is not None else "–"
                 for m in metrics]
        if any(c != "–" for c in cells):
            rows.append([title, *cells])
    return header, rows


def kid_notes(rows: list[list[str]], metrics: list[dict]) -> list[str]:
    """The footnotes of the KID marks in a table's rows (none when no KID there is marked)."""
    features = next((f for m in metrics if (f := fsd_features(m))), None)
    return kid_footnotes([c for r in rows for c in r], features)


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = [_row(header), _row(["---"] * len(header))] + [_row(r) for r in rows]
    return "\n".join(lines)


def markdown_report(metrics: list[dict]) -> str:
    """Table 1 (+ counts, per-concept QD, and Table 2 for each multi-iteration run) as markdown."""
    def table(header: list[str], rows: list[list[str]], runs: list[dict] = metrics) -> list[str]:
        notes = kid_notes(rows, runs)
        return [markdown(header, rows)] + (["", *("- " + n for n in notes)] if notes else [])

    parts = ["**Table 1** (paper layout; 95 % intervals in brackets: rates Clopper–Pearson, means bootstrap over "
             "frames; KID ± its subset std; FID / FSD only from 256 frames a side)", "", *table(*table1_rows(metrics)), "",
             "**Counts, cost and ground truth**", "", markdown(*extra_rows(metrics)), "",
             "**Per-concept quality difference** (inputs with QS_O(x) < 0.5)", "", markdown(*qd_rows(metrics))]
    loc = locality_rows(metrics)
    if loc is not None:
        parts += ["", "**Where the change is** (footprint: where the low-passed input and ground truth differ by > 0.1 "
                  "at σ = width/40, dilated 3 px)", "", markdown(*loc)]
    real = real_rows(metrics)
    if real is not None:
        parts += ["", "**Judges of real frames** (the authors' SonoNet-16; HC of an ellipse fitted to the segmented head)",
                  "", *table(*real)]
    for m in metrics:
        if m.get("per_iteration"):
            parts += ["", f"**Table 2**: {method_name(m['method'])} after each iteration", "", *table(*table2_rows(m), [m])]
    return "\n".join(parts) + "\n"
