"""The paper's tables as markdown: Table 1 (one row per method) and Table 2 (one row per iteration)."""

from __future__ import annotations

import math

METHOD_NAMES = {"diff-ice": "Diff-ICE", "diff-ice1": "Diff-ICE1", "diff-ice1-xt": "Diff-ICE1-xt", "dime": "DiME"}

QUALITY = [("fid", "FID ↓", 2), ("fsd", "FSD ↓", 3), ("sonosim", "SonoSim ↑", 3), ("mqd", "MQD ↑", 3),
           ("bkl", "BKL ↓", 3), ("mad", "MAD ↑", 3), ("fr", "FR ↑", 3)]


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    value = float(value)
    if value != 0 and abs(value) < 10 ** -digits:
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def method_name(method: str) -> str:
    return METHOD_NAMES.get(str(method), str(method))


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table1_rows(metrics: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["Method"] + [t for _, t, _ in QUALITY] + ["Batch time (s)", "Total time (h)", "Memory (GB)"]
    rows = []
    for m in metrics:
        rows.append([method_name(m["method"])] + [fmt(m.get(k), d) for k, _, d in QUALITY]
                    + [_batch_time(m), fmt(m.get("total_hours"), 2), fmt(m.get("peak_memory_gb"), 1)])
    return header, rows


def extra_rows(metrics: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Counts and ground truth: frames, NSP by guide, oracle-selected, flipped, NFE, phantom target L1."""
    header = ["Method", "Frames", "NSP (guide)", "QS_O<0.5", "Flipped", "Adversarial", "NFE / frame",
              "L1 to target: input", "L1 to target: cf", "Closer (footprint)", "Closer (sector)"]
    rows = []
    for m in metrics:
        closer = f"{m.get('n_closer_to_target', 0)} / {m.get('n_target', 0)}" if m.get("n_target") else "–"
        sector = f"{m.get('n_closer_sector', 0)} / {m.get('n_target_sector', 0)}" if m.get("n_target_sector") else "–"
        adv = "–" if m.get("n_adversarial") is None else str(m["n_adversarial"])
        rows.append([method_name(m["method"]), str(m["n_frames"]), str(m.get("n_nsp_guide", "–")),
                     str(m.get("n_oracle_selected", "–")), str(m.get("n_flipped", "–")), adv,
                     fmt(m.get("nfe_per_frame"), 1), fmt(m.get("target_l1_input"), 3),
                     fmt(m.get("target_l1_cf"), 3), closer, sector])
    return header, rows


def table2_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
    header = ["Iteration"] + [t for _, t, _ in QUALITY] + ["Frames running", "Batch time (s)", "Iteration time (h)"]
    rows = [[str(it["iteration"])] + [fmt(it.get(k), d) for k, _, d in QUALITY]
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
    rows = [[method_name(m["method"]), fmt(m.get("mqd")), fmt(m.get("mqd_selected"))]
            + [fmt((m.get("qd") or {}).get(c)) for c in names] for m in metrics]
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = [_row(header), _row(["---"] * len(header))] + [_row(r) for r in rows]
    return "\n".join(lines)


def markdown_report(metrics: list[dict]) -> str:
    """Table 1 (+ counts, per-concept QD, and Table 2 for each multi-iteration run) as markdown."""
    parts = ["**Table 1** (paper layout)", "", markdown(*table1_rows(metrics)), "",
             "**Counts, cost and ground truth**", "", markdown(*extra_rows(metrics)), "",
             "**Per-concept quality difference** (inputs with QS_O(x) < 0.5)", "", markdown(*qd_rows(metrics))]
    for m in metrics:
        if m.get("per_iteration"):
            parts += ["", f"**Table 2**: {method_name(m['method'])} after each iteration", "", markdown(*table2_rows(m))]
    return "\n".join(parts) + "\n"
