"""A self-contained ``report.html``: the tables, Fig. 4 as inline SVG, and a few frames.

Everything is embedded (PNG as base64 ``data:`` URIs, SVG inline, CSS in the page), so the
file can be mailed or archived alone. No JavaScript.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np

from diffice.report.records import difference_map, num, png_bytes, read_png
from diffice.report.tables import (
    extra_rows,
    kid_notes,
    locality_rows,
    method_name,
    qd_rows,
    real_rows,
    table1_rows,
    table2_rows,
)

CSS = """
b.warn{color:#c0392b}
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.5em;margin-bottom:0}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.muted{color:#666;font-size:.9em}
.frame{border-top:1px solid #eee;padding:8px 0}.strip{display:flex;flex-wrap:wrap;gap:6px}
.strip figure{margin:0;text-align:center;width:128px}.strip img{width:128px;image-rendering:pixelated;border:1px solid #ddd}
.strip figcaption{font-size:.72em;color:#555}.scores{font-size:.85em;margin-bottom:4px}
ul.notes li{color:#8a5a00}.fig svg{max-width:100%;height:auto}
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table_html(header: list[str], rows: list[list[str]], cls: str = "", runs: list[dict] | None = None) -> str:
    """A table; with ``runs``, the footnotes of its marked KID cells below it (:func:`kid_notes`)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    notes = "".join(f"<p class='muted'>{html.escape(n)}</p>" for n in kid_notes(rows, runs)) if runs else ""
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>' + notes


# ----------------------------------------------------------------------------- Fig. 4


def fig4_points(records: list[dict], concepts: list[str]) -> dict[str, list[tuple[float, float, bool]]]:
    """Per panel (overall "QS_O" then each concept): (input score, QD, flipped) for QS_O(x) < 0.5."""
    sel = [r for r in records if num(r["qs_input"]) < 0.5 and math.isfinite(num(r["qs_cf"]))]
    panels = {"QS_O": [(num(r["qs_input"]), num(r["qs_cf"]) - num(r["qs_input"]), bool(r["flipped"])) for r in sel]}
    for c in concepts:
        pts = []
        for r in sel:
            a, b = num((r.get("concepts_input") or {}).get(c)), num((r.get("concepts_cf") or {}).get(c))
            if math.isfinite(a) and math.isfinite(b):
                pts.append((a, b - a, bool(r["flipped"])))
        panels[c] = pts
    return panels


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    step = (hi - lo) / (n - 1)
    return [lo + i * step for i in range(n)]


def fig4_svg(records: list[dict], concepts: list[str], panel_w: int = 250, panel_h: int = 220) -> str:
    """The paper's Fig. 4 as an SVG string: QD against the input's score, one panel per score."""
    panels = fig4_points(records, concepts)
    ml, mr, mt, mb = 46, 10, 26, 40
    width, height = panel_w * len(panels), panel_h
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 22}" '
             f'viewBox="0 0 {width} {height + 22}" font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height + 22}" fill="white"/>']
    for p, (name, pts) in enumerate(panels.items()):
        x0 = p * panel_w
        pw, ph = panel_w - ml - mr, panel_h - mt - mb
        xs = [a for a, _, _ in pts]
        ys = [d for _, d, _ in pts]
        xlo, xhi = (0.0, 0.5) if name == "QS_O" else (0.0, 1.0)
        if xs:
            xlo, xhi = min(xlo, min(xs)), max(xhi, max(xs))
        ylim = max([0.2] + [abs(y) for y in ys]) * 1.1
        ylo, yhi = -ylim, ylim

        def sx(v, x0=x0, xlo=xlo, xhi=xhi, pw=pw):
            return x0 + ml + (v - xlo) / (xhi - xlo) * pw

        def sy(v, ylo=ylo, yhi=yhi, ph=ph):
            return mt + (yhi - v) / (yhi - ylo) * ph

        title = "Overall (O)" if name == "QS_O" else name.removeprefix("qs_").upper()
        parts.append(f'<text x="{x0 + ml + pw / 2:.1f}" y="16" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>')
        parts.append(f'<rect x="{x0 + ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
        for t in _ticks(xlo, xhi):
            parts.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{mt + ph}" y2="{mt + ph + 4}" stroke="#444"/>'
                         f'<text x="{sx(t):.1f}" y="{mt + ph + 15}" text-anchor="middle">{t:.2g}</text>')
        for t in _ticks(ylo, yhi):
            parts.append(f'<line x1="{x0 + ml - 4}" x2="{x0 + ml}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#444"/>'
                         f'<text x="{x0 + ml - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:.2f}</text>')
        parts.append(f'<line x1="{x0 + ml}" x2="{x0 + ml + pw}" y1="{sy(0):.1f}" y2="{sy(0):.1f}" stroke="#999" stroke-dasharray="4 3"/>')
        xl = "QS_O(x)" if name == "QS_O" else f"{name.upper()}(x)"
        parts.append(f'<text x="{x0 + ml + pw / 2:.1f}" y="{mt + ph + 32}" text-anchor="middle">{html.escape(xl)}</text>')
        yl = "QD_O(x, x_c)" if name == "QS_O" else f"QD {title}"
        parts.append(f'<text transform="translate({x0 + 11},{mt + ph / 2:.1f}) rotate(-90)" text-anchor="middle">{html.escape(yl)}</text>')
        for a, d, flipped in pts:
            colour = "#1f77b4" if flipped else "#ff7f0e"
            parts.append(f'<circle cx="{sx(a):.1f}" cy="{sy(d):.1f}" r="3" fill="{colour}" fill-opacity="0.7"/>')
        if not pts:
            parts.append(f'<text x="{x0 + ml + pw / 2:.1f}" y="{mt + ph / 2:.1f}" text-anchor="middle" fill="#888">no frames</text>')
    parts.append(f'<circle cx="{ml + 6}" cy="{height + 10}" r="4" fill="#1f77b4"/>'
                 f'<text x="{ml + 14}" y="{height + 14}">valid (flipped to SP)</text>'
                 f'<circle cx="{ml + 156}" cy="{height + 10}" r="4" fill="#ff7f0e"/>'
                 f'<text x="{ml + 164}" y="{height + 14}">not flipped</text>')
    parts.append("</svg>")
    return "".join(parts)


# ----------------------------------------------------------------------------- frames


def pick_frames(records: list[dict], count: int) -> list[dict]:
    """``count`` frames evenly spread over the run (by index order), not chosen by score."""
    if len(records) <= count:
        return list(records)
    pos = np.linspace(0, len(records) - 1, count).round().astype(int)
    return [records[i] for i in sorted(set(pos.tolist()))]


def frame_strip(rec: dict) -> list[tuple[str, str, bytes]]:
    """(key, caption, PNG bytes) along a frame: input, segmentation, iterations, counterfactual,
    its segmentation, difference map, ground-truth target. Keys: input, seg_input, iter{k}, dense
    (the sparse refinement's starting point), cf, seg_cf, diff, target; files a run lacks are left out."""
    d: Path = rec["_dir"]
    out = [("input", "input", (d / "input.png").read_bytes())]
    if (d / "seg_input.png").exists():
        out.append(("seg_input", "input segmentation", (d / "seg_input.png").read_bytes()))
    p_iters = rec.get("p_iters") or []
    for k in range(1, int(rec.get("iterations") or 0) + 1):
        if (d / f"iter{k}.png").exists():
            cap = f"iter {k}" + (f" (p={num(p_iters[k - 1]):.2f})" if k <= len(p_iters) else "")
            out.append((f"iter{k}", cap, (d / f"iter{k}.png").read_bytes()))
    if (d / "dense.png").exists():
        frac = rec.get("sparse_mask_fraction")
        opening = rec.get("sparse_opening")
        mask = (f"sparse mask {num(frac):.0%} of the frame" + (f", layout change opened {opening} px" if opening else "")
                if frac is not None else "")
        out.append(("dense", "dense cf" + (f" ({mask})" if mask else ""),
                    (d / "dense.png").read_bytes()))
    cap = "counterfactual" + (f" (p={num(rec.get('p_cf')):.2f})" if rec.get("p_dense") is not None else "")
    change = rec.get("change") or {}
    regions = {k: v for k, v in (change.get("regions") or {}).items() if v is not None}
    if regions:  # the explanation in one line: which anatomy the change falls in
        top = sorted(regions.items(), key=lambda kv: -kv[1])[:2]
        cap += " · change: " + ", ".join(f"{k} {v:.0%}" for k, v in top)
        if change.get("in_footprint") is not None:
            cap += f" · {change['in_footprint']:.0%} in the fault"
    before, after = rec.get("concepts_input") or {}, rec.get("concepts_cf") or {}
    moved = sorted((k for k in before if k in after), key=lambda k: -abs(num(after[k]) - num(before[k])))[:2]
    if moved:  # the oracle's concept scores that moved most, before -> after
        cap += " · " + ", ".join(f"{k.removeprefix('qs_')} {num(before[k]):.2f}→{num(after[k]):.2f}" for k in moved)
    if rec.get("brain_cf") is not None:
        cap += f" (SonoNet brain {num(rec.get('p_brain_cf')):.2f})"
    out.append(("cf", cap, (d / "cf.png").read_bytes()))
    if (d / "seg_cf.png").exists():
        out.append(("seg_cf", "cf segmentation", (d / "seg_cf.png").read_bytes()))
    diff = difference_map(_grey(read_png(d / "input.png")), _grey(read_png(d / "cf.png")))
    out.append(("diff", "difference x_c − x", png_bytes(diff)))
    if (d / "target.png").exists():
        out.append(("target", "ground-truth target", (d / "target.png").read_bytes()))
    return out


def _grey(a: np.ndarray) -> np.ndarray:
    return a if a.ndim == 2 else a.mean(axis=2).round().astype(np.uint8)


def _frames_html(records: list[dict], count: int) -> str:
    blocks = []
    for rec in pick_frames(records, count):
        figs = "".join(f'<figure><img src="{data_uri(b)}" alt="{html.escape(c)}"><figcaption>{html.escape(c)}</figcaption></figure>'
                       for _, c, b in frame_strip(rec))
        qd = num(rec["qs_cf"]) - num(rec["qs_input"])
        scores = (f"<b>#{int(rec['index'])}</b> {html.escape(str(rec['id']))} — "
                  f"guide p(SP) {num(rec['p_input']):.3f} → {num(rec['p_cf']):.3f} "
                  f"({'flipped' if rec['flipped'] else 'not flipped'}); "
                  f"oracle QS_O {num(rec['qs_input']):.3f} → {num(rec['qs_cf']):.3f} (QD {qd:+.3f}); λc = {rec['lambda_c']}"
                  + ("; <b class='warn'>adversarial texture</b> (high-frequency energy "
                     f"{num(rec['hf_cf']):.3f} &gt; {num(rec['hf_threshold']):.3f}, the 99th percentile of real SP frames)"
                     if rec.get("adversarial") else ""))
        blocks.append(f'<div class="frame"><div class="scores">{scores}</div><div class="strip">{figs}</div></div>')
    return "".join(blocks)


# ----------------------------------------------------------------------------- page


def run_label(run_dir: str | Path, generic: tuple[str, ...] = ()) -> str:
    """A run's name for a page title: its folder's name, or its parent's where the folder has a
    generic name (``runs/demo/counterfactuals`` -> ``demo``; ``runs/counterfactuals`` -> "")."""
    skip = {"", ".", "..", "runs", *(g.lower() for g in generic)}
    run_dir = Path(run_dir)
    return next((p.name for p in (run_dir, run_dir.parent) if p.name.lower() not in skip), "")


def report_title(run_dir: str | Path, method: str) -> str:
    """``diffice — Diff-ICE counterfactuals: demo``: the page title of a counterfactual run's report."""
    name = method_name(method)
    label = run_label(run_dir, ("counterfactuals", str(method), name))
    return f"diffice — {name} counterfactuals" + (f": {label}" if label else "")


def report_html(metrics: dict, records: list[dict], concepts: list[str], title: str,
                config_summary: dict[str, str], frames: int = 6) -> str:
    """The whole page as one string."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='muted'>{html.escape(method_name(metrics['method']))}: {metrics['n_frames']} frames, "
        f"{metrics['iterations']} iteration(s). "
        + ", ".join(f"{html.escape(k)} = {html.escape(v)}" for k, v in config_summary.items()) + "</p>",
        "<h2>Table 1: realism, validity, efficiency</h2>",
        _table_html(*table1_rows([metrics]), runs=[metrics]),
        "<p class='muted'>FID/FSD: all inputs vs the valid (flipped) counterfactuals; SonoSim: all pairs; "
        "FR, MAD, BKL: inputs the guide calls NSP; MQD: inputs with oracle QS_O(x) &lt; 0.5. "
        "Total time is device-hours summed over processes. Adversarial: counterfactuals whose high-frequency "
        "energy exceeds the 99th percentile of the training split's standard planes (texture, not anatomy). "
        "Closer (footprint): L1 to the phantom's ground-truth target inside the fault's footprint; "
        "closer (sector): over the whole imaged sector.</p>",
        _table_html(*extra_rows([metrics])),
        _table_html(*qd_rows([metrics])),
    ]
    loc = locality_rows([metrics])
    if loc is not None:
        parts += ["<h2>Where the change is</h2>",
                  "<p class='muted'>Pixels changed by more than 2 grey levels; of the squared change Σ(x_c − x)², the "
                  "share inside the fault's footprint (where the low-passed input and ground truth differ by more than "
                  "0.1 at σ = width/40, dilated 3 px) and the PSNR to the input outside it. A counterfactual that "
                  "changes only what it must puts most of its change inside and leaves the outside near the input.</p>",
                  _table_html(*loc)]
    real = real_rows([metrics])
    if real is not None:
        parts += ["<h2>Judges of real frames</h2>",
                  "<p class='muted'>The authors' SonoNet-16 (brain plane = Brain (Cb.) or Brain (Tv.) is its argmax) "
                  "on input, counterfactual and clean target; head circumference of an ellipse fitted to the "
                  "segmented head, in mm (the same segmenter for all three), against the target's and the "
                  "annotators' HC.</p>", _table_html(*real, runs=[metrics])]
    if metrics.get("per_iteration"):
        parts += ["<h2>Table 2: after each iteration</h2>", _table_html(*table2_rows(metrics), runs=[metrics]),
                  "<p class='muted'>A frame that stopped early (adaptive) keeps its last output in later rows.</p>"]
    parts += ["<h2>Fig. 4: quality difference against the input's quality</h2>",
              "<p class='muted'>Inputs with QS_O(x) &lt; 0.5; QD = score(x_c) − score(x), per oracle concept.</p>",
              f"<div class='fig'>{fig4_svg(records, concepts)}</div>",
              f"<h2>Frames ({min(frames, len(records))} of {len(records)}, evenly spaced, not selected by score)</h2>",
              "<p class='muted'>Difference map: red where the counterfactual is brighter, blue where darker, "
              "white unchanged (scaled to the frame's largest change).</p>",
              _frames_html(records, frames)]
    if metrics.get("notes"):
        parts.append("<h2>Notes</h2><ul class='notes'>" + "".join(f"<li>{html.escape(n)}</li>" for n in metrics["notes"]) + "</ul>")
    parts.append("<p class='muted'>Generated by diffice from the run folder's files; "
                 "<code>diffice evaluate RUN_DIR</code> recomputes it.</p></body></html>")
    return "\n".join(parts)
