"""A synthesis run's numbers: metrics.json (:func:`summarize`, with FID / FSD from
:func:`realism_metrics`), results.csv, pairs.csv, the report and W&B (:func:`finish`), and the
lines a command prints (:func:`summary_lines`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from diffice.errors import UserError
from diffice.io import atomic_write_text, to_uint8
from diffice.runfolder import json_safe, write_rows_csv
from diffice.synthesis import metrics as M
from diffice.synthesis.jobs import change_within


def summarize(syn, layout_recs: list[dict], edit_recs: list[dict], realism: dict | None = None) -> dict:
    classes = syn.classes
    samples = [s for r in layout_recs for s in r["samples"]]
    m: dict = {"ckpt": syn.ckpt, "trained_steps": syn.module.trained_steps, "layouts": len(layout_recs), "samples": len(samples),
               "two_stage": syn.steer is not None, "prealign": bool(syn.module.cfg.synthesis.prealign),
               "repaint": bool(syn.s.repaint), "respacing": str(syn.s.respacing),
               "judge": str(syn.s.judge_ckpt) if syn.judge is not None else None}
    if syn.judge is not None and samples:
        m["dice"] = M.per_structure([s["judge_dice"] for s in samples], classes)
        if any("judge_dice_stage1" in s for s in samples):
            m["dice_stage1"] = M.per_structure([s["judge_dice_stage1"] for s in samples if "judge_dice_stage1" in s], classes)
        reals = [r["judge_dice_real"] for r in layout_recs if r.get("judge_dice_real")]
        if reals:
            m["dice_real"] = M.per_structure(reals, classes)
    if samples:
        m["seconds_per_sample"] = float(np.mean([r["seconds_per_sample"] for r in layout_recs]))
        div = [r["diversity"] for r in layout_recs if r["diversity"]["l1"] is not None and not math.isnan(r["diversity"]["l1"])]
        m["diversity_l1"] = float(np.mean([d["l1"] for d in div])) if div else None
        m["diversity_ssim_distance"] = float(np.mean([d["ssim_distance"] for d in div])) if div else None
        nfe = [s["nfe"] for s in samples if "nfe" in s]
        m["nfe"] = float(np.mean(nfe)) if nfe else None
        kept = [s.get("kept_round") for s in samples if "kept_round" in s]
        if kept:
            m["kept_stage2"] = sum(1 for k in kept if k and k > 0)
    if edit_recs:
        # (null in a record: nothing outside the edit, or, in runs before the 60 dB cap, an exact frame)
        ps = [r["psnr_outside"] for r in edit_recs if r["psnr_outside"] is not None]
        finite = [p for p in ps if math.isfinite(p)]
        m["edits"] = len(edit_recs)
        m["edit_psnr_outside_mean"] = float(np.mean(finite)) if finite else None
        m["edit_psnr_outside_min"] = float(min(ps)) if ps else None
        m["edit_psnr_outside_at_least_30"] = sum(1 for p in ps if p >= 30)
        held = [r["psnr_held"] for r in edit_recs if r.get("psnr_held") is not None]
        m["edit_psnr_held_min"] = float(min(held)) if held else None  # 60 dB (the cap) when every held region is exact
        m["edit_held_exact"] = sum(1 for r in edit_recs if r.get("held_exact"))
        m["edit_ssim_outside_mean"] = float(np.mean([r["ssim_outside"] for r in edit_recs if r["ssim_outside"] is not None]))
        acc = [r["edit_accuracy"] for r in edit_recs if r.get("edit_accuracy") is not None]
        acc0 = [r["edit_accuracy_source"] for r in edit_recs if r.get("edit_accuracy_source") is not None]
        m["edit_accuracy"] = float(np.mean(acc)) if acc else None
        m["edit_accuracy_source"] = float(np.mean(acc0)) if acc0 else None
        m["edit_seconds"] = float(np.mean([r["seconds"] for r in edit_recs]))
        names = sorted({r["anomaly"] for r in edit_recs if r.get("anomaly")})
        for r in edit_recs:
            if r.get("anomaly") and "within_change" not in r:
                r["within_change"] = change_within(r)
        if names:
            m["anomalies"] = {}
            for name in names:
                rs = [r for r in edit_recs if r.get("anomaly") == name]
                ok = [r["within_tolerance"] for r in rs if "within_tolerance" in r]
                m["anomalies"][name] = {"edits": len(rs), "severities": sorted({r["severity"] for r in rs}),
                                        "within_tolerance": sum(ok), "checked": len(ok),
                                        "fraction_within": float(np.mean(ok)) if ok else None,
                                        "source_within_tolerance": sum(bool(r.get("source_within_tolerance")) for r in rs),
                                        "within_change": sum(bool(r.get("within_change")) for r in rs),
                                        **_wide(rs)}
            ok = [r["within_tolerance"] for r in edit_recs if "within_tolerance" in r]
            m["anomaly_fraction_within"] = float(np.mean(ok)) if ok else None
    m["intervals"] = M.summary_intervals(layout_recs, edit_recs, classes)
    if realism:
        m.update(realism)
        if realism.get("washed_out_ci"):
            m["intervals"]["washed_out"] = realism["washed_out_ci"]
    return m


def _wide(rs: list[dict]) -> dict:
    """The changed structure's median width (px) and the check on the edits whose changed structure
    is at least ``anomalies.WIDE`` px wide (records made before the width was kept: nothing)."""
    from diffice.data.anomalies import WIDE

    widths = [float(r["changed_width"]) for r in rs if r.get("changed_width") is not None]
    if not widths:
        return {}
    wide = [r for r in rs if r.get("changed_width") is not None and float(r["changed_width"]) >= WIDE and "within_tolerance" in r]
    return {"changed_width_median": float(np.median(widths)), "wide_checked": len(wide),
            "wide_within_tolerance": sum(bool(r["within_tolerance"]) for r in wide),
            "wide_source_within_tolerance": sum(bool(r.get("source_within_tolerance")) for r in wide)}


def realism_metrics(cfg: DictConfig, syn, out: Path, layout_recs: list[dict], dm, device="cpu") -> dict:
    """FID (Inception) and FSD (oracle backbone / official SonoNet) of the samples against the real
    frames of the same planes in the split, and the same distances between those real frames and
    as many real training frames of those planes (the floor at this sample count)."""
    from diffice.modules.features import feature_nets
    from diffice.report.records import read_png

    try:
        feats = feature_nets(cfg, need_perceptual=False)
    except UserError as err:
        return {"realism_note": f"FID / FSD not computed: {err}"}
    planes = {r["plane"] for r in layout_recs}
    samples = []
    for r in layout_recs:
        d = out / "layouts" / f"{int(r['index']):06d}"
        samples += [read_png(p) for p in sorted(d.glob("sample_*.png"))]
    x = torch.from_numpy(np.stack(samples)).float()[:, None] / 127.5 - 1

    def real_frames(split: str, n: int | None) -> torch.Tensor:
        ds = dm.dataset(split)
        idx = [i for i in range(len(ds)) if ds.source.plane_of(int(ds.indices[i])) in planes]
        if n is not None and len(idx) > n:
            idx = [idx[k] for k in np.linspace(0, len(idx) - 1, n).round().astype(int)]
        return torch.stack([ds[i]["image"] for i in idx])

    real = real_frames(str(cfg.synthesis.split), None)
    train = real_frames("train", len(x))

    def fx(net, t):
        with torch.no_grad():
            return torch.cat([net(t[i : i + 32].to(device)).cpu() for i in range(0, len(t), 32)]).numpy().astype(np.float64)

    res = {"realism_samples": len(x), "realism_real": len(real), "realism_floor_frames": len(train)}
    res.update(M.washed_out(np.stack(samples), np.stack([to_uint8(f) for f in real]), np.stack([to_uint8(f) for f in train])))
    for key, net in (("fid", feats.fid), ("fsd", feats.sononet)):
        try:
            fs, fr, ft = fx(net, x), fx(net, real), fx(net, train)
        except UserError as err:
            res[f"{key}_note"] = str(err)
            continue
        kid_key = "kid" if key == "fid" else "kid_fsd"
        res.update(M.realism_pair(key, kid_key, fs, fr))
        floor = M.realism_pair(f"{key}_floor", f"{kid_key}_floor", ft, fr)
        res.update({k: v for k, v in floor.items() if not k.endswith("_n")})
    res["fsd_features"] = getattr(feats, "sononet_source", "")
    return res


def write_results_csv(out: Path, layout_recs: list[dict], edit_recs: list[dict], classes: list[str]) -> Path:
    rows = []
    for r in layout_recs:
        for s in r["samples"]:
            row = {"kind": "layout", "index": r["index"], "id": r["id"], "plane": r["plane"], "seed_id": s["seed_id"]}
            for c in classes[1:]:
                row[f"dice_{c}"] = (s.get("judge_dice") or {}).get(c)
            row.update({k: s.get(k) for k in ("steer_dice_stage1", "steer_dice", "kept_round")})
            rows.append(row)
    for r in edit_recs:
        rows.append({"kind": "edit", "index": r["index"], "id": r["id"], "plane": r["plane"], "seed_id": r["seed_id"],
                     "edit": r["edit"], "psnr_outside": r["psnr_outside"], "ssim_outside": r["ssim_outside"],
                     "edit_accuracy": r.get("edit_accuracy"), "changed_pixels": r["changed_pixels"],
                     **{k: r.get(k) for k in ANOMALY_KEYS}})
    return write_rows_csv(out / "results.csv", rows)


ANOMALY_KEYS = ("anomaly", "severity", "source_value", "requested_value", "measured_value", "tolerance", "within_tolerance",
                "measured_source", "source_within_tolerance", "within_change", "changed_width")


def write_pairs_csv(out: Path, edit_recs: list[dict]) -> Path | None:
    """``pairs.csv``: one pixel-paired (source, edited) frame pair per edit, with both layouts."""
    if not edit_recs:
        return None
    rows = []
    for r in edit_recs:
        d = f"edits/{r['name']}"
        rows.append({"source": f"{d}/source.png", "edited": f"{d}/edited.png", "layout_source": f"{d}/layout_before_classes.png",
                     "layout_edited": f"{d}/layout_after_classes.png", "id": r["id"], "plane": r["plane"], "ga": r.get("ga"),
                     "edit": r["edit"], "anomaly": r.get("anomaly", ""), "severity": r.get("severity"), "sham_of": r.get("sham_of", ""),
                     "psnr_outside": r["psnr_outside"], "within_tolerance": r.get("within_tolerance")})
    return write_rows_csv(out / "pairs.csv", rows)


def finish(out: Path, cfg: DictConfig, syn, layout_recs: list[dict], edit_recs: list[dict], realism: dict | None,
           report: bool = True) -> dict:
    metrics = summarize(syn, layout_recs, edit_recs, realism)
    write_results_csv(out, layout_recs, edit_recs, syn.classes)
    write_pairs_csv(out, edit_recs)
    atomic_write_text(out / "metrics.json", json.dumps(json_safe(metrics), indent=1, sort_keys=True))
    if report:
        from diffice.synthesis.report import write_report

        write_report(out, metrics, layout_recs, edit_recs, syn.classes)
    from diffice.report.wandb_log import log_synthesis

    log_synthesis(out, cfg, metrics, layout_recs, edit_recs)
    return metrics


def summary_lines(m: dict, classes: list[str], out, report: bool = True) -> list[str]:
    """What a synthesis run prints: samples, layout Dice, KID / FID, edits, anomalies, its files."""
    def f(v, key: str | None = None):  # a value, with its 95 % interval when metrics.json has one
        iv = (m.get("intervals") or {}).get(key) or {}
        ci = f" [{iv['low']:.3f}, {iv['high']:.3f}]" if iv.get("low") is not None else ""
        return "n/a" if v is None else f"{v:.3f}{ci}"

    lines = []
    if m.get("samples"):
        lines.append(f"{m['samples']} samples of {m['layouts']} layouts ({m.get('seconds_per_sample', 0):.1f} s per sample)")
    if m.get("dice"):
        lines.append("layout Dice (judge; 95 % intervals over samples): "
              + ", ".join(f"{c} {f(m['dice'].get(c), 'dice_' + c)}" for c in classes[1:]))
    if m.get("dice_real"):
        lines.append("  real frames:        " + ", ".join(f"{c} {f(m['dice_real'].get(c))}" for c in classes[1:]))
    if m.get("kid") is not None:
        lines.append(f"KID {m['kid']:.4f} ± {m['kid_std']:.4f} (real vs real {f(m.get('kid_floor'))}); FID "
              + (f"{m['fid']:.1f} (real vs real {f(m.get('fid_floor'))})" if m.get("fid") is not None
                 else "n/a (N {}/{}: shown from 256 a side)".format(*(m.get("fid_n") or ["?", "?"]))))
    if m.get("washed_out") is not None:
        ci, cc = m.get("washed_out_ci") or {}, m.get("washed_out_control_ci") or {}
        lines.append(f"washed out (corners or dark tissue brighter than 99 % of real frames): {ci.get('k', '?')} of "
                     f"{m['washed_out_n']} samples ({m['washed_out']:.3f} [{ci.get('low', 0):.3f}, {ci.get('high', 0):.3f}]); "
                     f"real frames: {cc.get('k', '?')} of {cc.get('n', '?')}")
    if m.get("edits"):
        lines.append(f"{m['edits']} edits: PSNR outside the edit mean {f(m.get('edit_psnr_outside_mean'), 'edit_psnr_outside_mean')} dB, "
              f"min {f(m.get('edit_psnr_outside_min'))}; edited pixels as requested {f(m.get('edit_accuracy'), 'edit_accuracy')} "
              f"(source {f(m.get('edit_accuracy_source'))})")
    for name, a in (m.get("anomalies") or {}).items():
        lines.append(f"  {name} (severity {', '.join(f'{v:g}' for v in a['severities'])}): {a['within_tolerance']} of {a['checked']} "
              f"edited frames measure as requested (judge's segmentation, docs/synthesis.md); unedited sources: "
              f"{a.get('source_within_tolerance', 0)} of {a['checked']}")
    files = ["report.html"] * report + ["results.csv", "metrics.json"] + ["pairs.csv"] * bool(m.get("edits"))
    lines.append(f"run folder: {out} ({', '.join(files)})")
    return lines
