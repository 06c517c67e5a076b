"""The synthesis run's self-contained ``report.html``: the numbers, layout -> samples rows, and
edits before / after with the difference map (the counterfactual report's CSS and helpers)."""

from __future__ import annotations

import html
import math
from pathlib import Path

from diffice.io import atomic_write_text
from diffice.report.html import CSS, data_uri, pick_frames, run_label


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if math.isinf(v):
            return "∞"
        if math.isnan(v):
            return "n/a"
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _fig(path: Path, caption: str) -> str:
    if not path.is_file():
        return ""
    return (f'<figure><img src="{data_uri(path.read_bytes())}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


PLANE_NAMES = {0: "trans-thalamic", 1: "trans-ventricular", 2: "trans-cerebellar", -1: "plane unknown"}


def _with_interval(metrics: dict, key: str, value) -> str:
    """A value with its 95 % interval from ``metrics["intervals"]`` (KID with its subset std)."""
    from diffice.metrics.kid import kid_marks
    from diffice.metrics.stats import fmt_interval, fmt_rate

    if key.startswith("kid") and value is not None and metrics.get(f"{key}_std") is not None:
        marks = kid_marks(key, value, metrics[key + "_std"], metrics.get("fsd_features"))
        return f"{value:.4f} ± {metrics[key + '_std']:.4f}" + (f" {marks}" if marks else "")
    if key in ("fid", "fsd") and value is None and metrics.get(f"{key}_n"):
        return "n/a (N {}/{}: too few frames for a Fréchet distance)".format(*metrics[f"{key}_n"])
    iv = (metrics.get("intervals") or {}).get(key)
    if iv and iv.get("k") is not None:
        return fmt_rate(iv)
    if iv and iv.get("low") is not None:
        return fmt_interval(iv, 1 if "psnr" in key else 3)
    return _fmt(value)


def summary_html(metrics: dict, classes: list[str]) -> str:
    parts = []
    if metrics.get("dice"):
        header = ["layout Dice (judge; 95 % interval over samples)"] + list(classes[1:])
        rows = [["samples"] + [_with_interval(metrics, f"dice_{c}", metrics["dice"].get(c)) for c in classes[1:]]]
        if metrics.get("dice_stage1"):
            rows.append(["stage 1 only"] + [_with_interval(metrics, f"dice_stage1_{c}", metrics["dice_stage1"].get(c))
                                            for c in classes[1:]])
        if metrics.get("dice_real"):
            rows.append(["real frames (ceiling)"] + [_fmt(metrics["dice_real"].get(c)) for c in classes[1:]])
        parts.append(_table(header, rows))
    rows = []
    for key, label in (("samples", "samples"), ("layouts", "layouts"), ("diversity_l1", "diversity: pairwise L1"),
                       ("diversity_ssim_distance", "diversity: 1 − SSIM"), ("fid", "FID (Inception)"), ("fid_floor", "FID real vs real (floor)"),
                       ("kid", "KID (Inception)"), ("kid_floor", "KID real vs real (floor)"),
                       ("fsd", "FSD"), ("fsd_floor", "FSD real vs real (floor)"),
                       ("kid_fsd", "KID (FSD features)"), ("kid_fsd_floor", "KID (FSD features) real vs real"), ("kept_stage2", "samples improved by stage 2"),
                       ("seconds_per_sample", "seconds per sample"), ("edits", "edits"),
                       ("edit_psnr_outside_mean", "edit PSNR outside (dB, mean of finite)"), ("edit_psnr_outside_min", "edit PSNR outside (min)"),
                       ("edit_psnr_outside_at_least_30", "edits with PSNR outside ≥ 30 dB"),
                       ("edit_psnr_held_min", "edit PSNR in the held region (min; RePaint pastes it: the 60 dB cap by construction)"),
                       ("edit_held_exact", "edits whose held region equals the source exactly"), ("edit_ssim_outside_mean", "edit SSIM outside"),
                       ("edit_accuracy", "edited pixels the judge labels as requested"),
                       ("edit_accuracy_source", "… the same pixels in the source frame")):
        if key in metrics and (metrics[key] is not None or metrics.get(f"{key}_n")):
            rows.append([label, _with_interval(metrics, key, metrics[key])])
    parts.append(_table(["measure", "value"], rows))
    from diffice.metrics.kid import kid_footnotes

    parts += [f"<p class='muted'>{html.escape(n)}</p>" for n in kid_footnotes([c for r in rows for c in r],
                                                                              metrics.get("fsd_features"))]
    if metrics.get("anomalies"):
        arows = [[html.escape(name), ", ".join(f"{v:g}" for v in a["severities"]), str(a["checked"]),
                  str(a["within_tolerance"]), str(a.get("source_within_tolerance", "")), str(a.get("within_change", ""))]
                 for name, a in metrics["anomalies"].items()]
        parts.append(_table(["anomaly", "severity", "edits", "measured as requested", "unedited source as requested (control)",
                             "change as requested"], arows))
    return "".join(parts)


def synthesis_title(out: Path) -> str:
    """``diffice — FetalFlex synthesis: demo``: the page title of a synthesis run's report."""
    label = run_label(out, ("synthesis", "synthesis-samples"))
    return "diffice — FetalFlex synthesis" + (f": {label}" if label else "")


def write_report(out: Path, metrics: dict, layouts: list[dict], edits: list[dict], classes: list[str], count: int = 8) -> Path:
    settings = (f"checkpoint {html.escape(str(metrics.get('ckpt')))} ({metrics.get('trained_steps')} steps); "
                f"pre-alignment {'on' if metrics.get('prealign') else 'off'}; two-stage adaptive sampling "
                f"{'on' if metrics.get('two_stage') else 'off'}; RePaint {'on' if metrics.get('repaint') else 'off'}; "
                f"{metrics.get('respacing')} sampling steps; layout judge: {html.escape(str(metrics.get('judge')))}")
    blocks = []
    for rec in pick_frames(layouts, count):
        d = out / "layouts" / f"{int(rec['index']):06d}"
        figs = _fig(d / "layout.png", "requested layout") + _fig(d / "real.png", "real frame")
        n = len(rec["samples"])
        for j in range(n):
            s = rec["samples"][j]
            dice = s.get("judge_dice") or {}
            mean = [v for v in dice.values() if v is not None]
            cap = f"sample {j}" + (f" (Dice {sum(mean) / len(mean):.2f})" if mean else "")
            if (d / f"stage1_{j}.png").is_file() and j == 0:
                figs += _fig(d / f"stage1_{j}.png", "sample 0, stage 1")
            figs += _fig(d / f"sample_{j}.png", cap)
        figs += _fig(d / "judge_0.png", "judge's segmentation of sample 0")
        head = (f"<b>#{int(rec['index'])}</b> {html.escape(str(rec['id']))} — {PLANE_NAMES.get(rec.get('plane'), '')}"
                + (f", GA {rec['ga']:.1f} w" if rec.get("ga") is not None else ""))
        blocks.append(f'<div class="frame"><div class="scores">{head}</div><div class="strip">{figs}</div></div>')
    eblocks = []
    for rec in pick_frames(edits, count):
        d = out / "edits" / rec["name"]
        figs = "".join(_fig(d / f, c) for f, c in (("source.png", "source frame"), ("layout_before.png", "its layout"),
                                                   ("layout_after.png", f"edited: {rec['edit']}"), ("edited.png", "edited frame"),
                                                   ("diff.png", "difference edited − source"), ("judge.png", "judge's segmentation")))
        head = (f"<b>{html.escape(rec['name'])}</b> {html.escape(str(rec['edit']))} — PSNR outside the edit "
                f"{_fmt(rec['psnr_outside'], 1)} dB, SSIM {_fmt(rec['ssim_outside'])}"
                + (f"; edited pixels labelled as requested {_fmt(rec.get('edit_accuracy'), 2)} (source {_fmt(rec.get('edit_accuracy_source'), 2)})"
                   if rec.get("edit_accuracy") is not None else "")
                + ("; RePaint" if rec.get("repaint") else "; regenerated (no RePaint)")
                + (f"; {html.escape(rec['anomaly'])}: judge measures {_fmt(rec.get('measured_value'), 3)}, requested "
                   f"{_fmt(rec.get('requested_value'), 3)} ± {_fmt(rec.get('tolerance'), 3)} (source {_fmt(rec.get('measured_source'), 3)}) — "
                   + ("as requested" if rec.get("within_tolerance") else "<b>not as requested</b>")
                   if rec.get("anomaly") and "measured_value" in rec else "")
                + (f"; sham of {html.escape(str(rec['sham_of']))} (layout unchanged)" if rec.get("sham_of") else ""))
        eblocks.append(f'<div class="frame"><div class="scores">{head}</div><div class="strip">{figs}</div></div>')
    title = html.escape(synthesis_title(out))
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{CSS}</style></head><body>
<h1>{title}</h1><p class="muted">Anatomy-controlled synthesis: {settings}</p>
<h2>Numbers</h2>{summary_html(metrics, classes)}
<p class="muted">Layout Dice: the judge segments each sample; Dice between the requested and the recovered layout, per structure,
over the samples whose layout has it. "real frames" is the same judge on the frames the layouts come from: no sample can be
expected to beat it. FID / FSD against real frames of the same planes; the floor compares those real frames with as many real
training frames (distances at this sample count are biased upwards).</p>
<h2>Layouts → samples</h2><p class="muted">{len(layouts)} layouts, {len(pick_frames(layouts, count))} shown (evenly spread, not chosen by score)</p>
{''.join(blocks) or '<p>none</p>'}
<h2>Edits</h2><p class="muted">{len(edits)} edits, {len(pick_frames(edits, count))} shown</p>{''.join(eblocks) or '<p>none</p>'}
</body></html>"""
    return atomic_write_text(out / "report.html", page)
