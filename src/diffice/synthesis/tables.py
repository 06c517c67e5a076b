"""Markdown tables of several synthesis runs (an experiment's rows): the ablation table, and the
anomaly table of anomaly-edit runs."""

from __future__ import annotations

ABLATION_COLUMNS = (
    ("dice", "head", "Dice head"), ("dice", "bone", "Dice bone"), ("dice", "th", "Dice TH"), ("dice", "csp", "Dice CSP"),
    (None, "washed_out", "washed out ↓"),
    (None, "fid", "FID ↓"), (None, "kid", "KID ↓"),
    (None, "fsd", "FSD ↓"), (None, "kid_fsd", "KID (FSD features) ↓"),
    (None, "diversity_l1", "diversity L1"),
    (None, "edit_psnr_outside_mean", "edit PSNR outside (dB)"), (None, "edit_psnr_outside_min", "min"),
    (None, "edit_psnr_outside_at_least_30", "edits ≥ 30 dB"), (None, "edit_accuracy", "edit followed"),
    (None, "nfe", "NFE / sample"), (None, "seconds_per_sample", "s / sample"),
)


def anomaly_table(rows: list[tuple[str, dict]]) -> str:
    """Markdown table of anomaly-edit runs: per run and anomaly, how many edited frames the judge
    measures within the tolerance of the requested severity, and how well the outside is kept."""
    from diffice.data.anomalies import WIDE

    lines = ["| run | anomaly | severity | edits | changed width (px, median) | measured as requested | "
             "control: unedited source as requested | change as requested | "
             f"changed ≥ {WIDE} px: as requested | its control | edit PSNR outside (dB) | min |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    total = [0, 0, 0, 0]
    wide = [0, 0, 0]
    for label, m in rows:
        for name, a in (m.get("anomalies") or {}).items():
            k, n = a["within_tolerance"], a["checked"]
            total[0] += k
            total[1] += n
            frac = _rate(k, n)
            ctl = a.get("source_within_tolerance")
            total[2] += ctl or 0
            ctl = f"{ctl} of {n}" if ctl is not None and n else "n/a"
            ch = a.get("within_change")
            total[3] += ch or 0
            ch = _rate(ch, n) if ch is not None else "n/a"
            width = f"{a['changed_width_median']:.1f}" if a.get("changed_width_median") is not None else "n/a"
            for j, key in enumerate(("wide_within_tolerance", "wide_checked", "wide_source_within_tolerance")):
                wide[j] += a.get(key) or 0
            has_wide = a.get("wide_checked") is not None
            w_ok = _rate(a["wide_within_tolerance"], a["wide_checked"]) if has_wide else "n/a"
            w_ctl = _rate(a["wide_source_within_tolerance"], a["wide_checked"]) if has_wide else "n/a"
            lines.append(f"| {label} | {name} | {', '.join(f'{v:g}' for v in a['severities'])} | {a['edits']} | {width} | {frac} | {ctl} | {ch} | "
                         f"{w_ok} | {w_ctl} | "
                         f"{m.get('edit_psnr_outside_mean', float('nan')):.1f} | {m.get('edit_psnr_outside_min', float('nan')):.1f} |")
    if total[1]:
        lines.append(f"| all | | | {total[1]} | | {_rate(total[0], total[1])} | {total[2]} of {total[1]} | "
                     f"{_rate(total[3], total[1])} | {_rate(wide[0], wide[1]) if wide[1] else 'n/a'} | "
                     f"{_rate(wide[2], wide[1]) if wide[1] else 'n/a'} | | |")
    return "\n".join(lines) + "\n\nRates: k of n (percent [95 % Clopper–Pearson interval]).\n"


def _rate(k: int, n: int) -> str:
    """``6 of 11 (55 % [23, 83])``: a rate with its exact 95 % interval."""
    from diffice.metrics.stats import fmt_rate, rate_interval

    return fmt_rate(rate_interval(k, n), percent=True, missing="n/a")


def synthesis_table(rows: list[tuple[str, dict]]) -> str:
    """Markdown table of synthesis runs (label, metrics.json), plus each run's stage-1 Dice and the
    judge's ceiling on real frames where the run has them; anomaly-edit runs get :func:`anomaly_table`."""
    if rows and all(m.get("anomalies") and not m.get("samples") for _, m in rows):
        return anomaly_table(rows)

    from diffice.metrics.kid import kid_footnotes, kid_marks
    from diffice.metrics.stats import fmt_interval, fmt_rate
    from diffice.report.tables import fmt

    def cell(m, section, key):
        """A value with its 95 % interval (``intervals``), KID ± subset std, FID / FSD or n/a (N a/b)."""
        v = (m.get(section) or {}).get(key) if section else m.get(key)
        iv = (m.get("intervals") or {}).get(f"{section}_{key}" if section else key)
        digits = 1 if key in ("fid", "fsd", "nfe", "edit_psnr_outside_mean", "edit_psnr_outside_min") else 3
        if key in ("fid", "fsd") and v is None and m.get(f"{key}_n"):
            return "n/a (N {}/{})".format(*m[f"{key}_n"])
        if key.startswith("kid") and v is not None and m.get(f"{key}_std") is not None:
            marks = kid_marks(key, v, m[key + "_std"], m.get("fsd_features"))
            return f"{fmt(v, 4)} ± {fmt(m[key + '_std'], 4)}" + (f" {marks}" if marks else "")
        if iv and iv.get("k") is not None:
            return fmt_rate(iv)
        if iv and iv.get("value") is not None:
            return fmt_interval(iv, digits)
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return str(v)

    head = "| run | " + " | ".join(c for _, _, c in ABLATION_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(ABLATION_COLUMNS) + 1)]
    for label, m in rows:
        n_edits = m.get("edits")
        cells = [cell(m, s, k) for s, k, _ in ABLATION_COLUMNS]
        i = [k for _, k, _ in ABLATION_COLUMNS].index("edit_psnr_outside_at_least_30")
        if n_edits and " of " not in cells[i]:
            cells[i] = f"{cells[i]} of {n_edits}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    extra = []
    for label, m in rows:
        if m.get("dice_stage1"):
            extra.append(f"| {label}: stage 1 alone | " + " | ".join(cell(m, "dice_stage1", k) for k in ("head", "bone", "th", "csp"))
                         + " | " + " | ".join("" for _ in ABLATION_COLUMNS[4:]) + " |")
    last = rows[-1][1] if rows else {}
    if last.get("dice_real"):
        extra.append("| judge on the real frames (ceiling) | " + " | ".join(cell(last, "dice_real", k) for k in ("head", "bone", "th", "csp"))
                     + " | " + " | ".join("" for _ in ABLATION_COLUMNS[4:]) + " |")
    floor = [f"FID real vs real {last['fid_floor']:.1f}" if last.get("fid_floor") is not None else "",
             f"KID real vs real {cell(last, None, 'kid_floor')}" if last.get("kid_floor") is not None else "",
             f"FSD real vs real {last['fsd_floor']:.1f}" if last.get("fsd_floor") is not None else "",
             f"KID (FSD features) real vs real {cell(last, None, 'kid_fsd_floor')}" if last.get("kid_fsd_floor") is not None else "",
             "washed out: {} of {} real frames of another split".format(last["washed_out_control_ci"]["k"], last["washed_out_control_ci"]["n"])
             if last.get("washed_out_control_ci") else ""]
    note = ("\n\nFloor at this sample count: " + ", ".join(f for f in floor if f) + ".") if any(floor) else ""
    marked = kid_footnotes(lines + extra + floor, next((m["fsd_features"] for _, m in rows if m.get("fsd_features")), None))
    note += "".join(f"\n\n{n}." for n in marked)
    return "\n".join(lines + extra) + note + "\n"
