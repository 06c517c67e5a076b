"""A counterfactual run end to end: the models (the shipped pack when nothing is trained), the
frames (:func:`diffice.modules.counterfactual.run_counterfactuals`), then metrics and report
(:func:`diffice.report.finalize_run`), one writer at a time; and the lines that summarise it."""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig


def summary_from_records(records: list[dict]) -> dict:
    """The summary of a run without its report (``--no-report``), from its records (the paper's definitions)."""
    from diffice.report.records import guide_threshold

    t = guide_threshold(records)
    nsp = [r for r in records if (r.get("p_input") or 0.0) <= t]
    fr = sum(bool(r["flipped"]) for r in nsp) / len(nsp) if nsp else math.nan
    n = len(records)
    scored = [r for r in records if r.get("qs_input") is not None and r.get("qs_cf") is not None]
    mqd = sum((r["qs_cf"] - r["qs_input"]) for r in scored if r["qs_input"] < 0.5) / n if scored else math.nan
    tgt = [r for r in records if r.get("target_l1_cf") is not None]
    closer = sum(r["target_l1_cf"] < r["target_l1_input"] for r in tgt)
    return {"fr": fr, "mqd": mqd, "n_closer_to_target": closer, "n_target": len(tgt), "report": None}


def run_counterfactual(cfg: DictConfig, *, wait: bool = False, report: bool = True, log=print) -> tuple[Path, list[dict], dict] | None:
    """Make the counterfactuals of ``cfg`` into ``cf.out`` and (``report``) its metrics and report.

    Returns ``(run folder, records, summary)``, or None on a DDP process other than global zero."""
    from diffice.experiments.pack import use_pack_if_untrained
    from diffice.modules.counterfactual import run_counterfactuals
    from diffice.report import finalize_run
    from diffice.runfolder import read_records
    from diffice.runlock import run_lock

    for line in use_pack_if_untrained(cfg):
        log(line)
    summary = None
    with run_lock(cfg.cf.out, "diffice counterfactuals", wait=wait):  # the run and its report: one writer
        res = run_counterfactuals(cfg)
        if res is None:  # a non-zero DDP rank: rank zero reports
            return None
        out, indices = res
        if report:
            summary = finalize_run(out, cfg)
    if summary is None:
        summary = summary_from_records(read_records(out, indices))
    return out, read_records(out, indices), summary


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def summary_lines(method: str, out: Path, records: list[dict], summary: dict) -> list[str]:
    """What a counterfactual run printed: flip ratio, MQD, closer to the target, anatomy kept, files."""
    nfe = sum(r["nfe"] for r in records) / max(1, len(records))
    lines = [f"{method}: {len(records)} frames in {out}"]
    iv = (summary.get("metrics") or {}).get("intervals") or {}

    def ci(key: str) -> str:  # " [low, high]": the 95 % interval, when the report computed one
        b = iv.get(key) or {}
        return f" [{b['low']:.2f}, {b['high']:.2f}]" if b.get("low") is not None else ""

    lines.append(f"  flip ratio {_fmt(summary.get('fr'))}{ci('fr')}   MQD {_fmt(summary.get('mqd'))}{ci('mqd')}   "
                 f"denoiser evaluations {nfe:.0f} per frame (mean); 95 % intervals in brackets")
    if summary.get("n_target"):
        lines.append(f"  closer to the ground-truth target: {summary['n_closer_to_target']} of {summary['n_target']} frames"
                     f"{ci('closer_to_target')} (inside the fault's footprint)"
                     + (f", {summary['n_closer_sector']} of {summary['n_target_sector']}{ci('closer_sector')} (whole sector)"
                        if summary.get("n_target_sector") else ""))
    dice = (summary.get("metrics") or {}).get("anatomy_dice") or {}
    if dice:
        lines.append("  anatomy kept (segmentation Dice input vs counterfactual): "
                     + ", ".join(f"{k} {_fmt(v)}{ci('anatomy_dice_' + k)}" for k, v in dice.items()))
    if summary.get("n_adversarial") is not None:
        lines.append(f"  adversarial texture (high-frequency energy beyond real SP frames): {summary['n_adversarial']} of "
                     f"{len(records)} frames{ci('adversarial_fraction')}")
    lines.append(f"  results: {Path(out) / 'results.csv'}")
    if summary.get("report"):
        lines.append(f"  report:  {summary['report']}")
    return lines


def counterfactuals(cfg: DictConfig, *, wait: bool = False, report: bool = True) -> Path | None:
    """:func:`run_counterfactual` with its summary printed; the run folder (None off global zero)."""
    res = run_counterfactual(cfg, wait=wait, report=report)
    if res is None:
        return None
    out, records, summary = res
    for line in summary_lines(str(cfg.cf.method), out, records, summary):
        print(line)
    return out


# ----------------------------------------------------------------------------- the experiment kind


def run_row(exp, row) -> dict | None:
    """``kind: counterfactuals``: the row's run into its folder (finished frames kept); its metrics.json
    (None on a non-zero DDP process)."""
    import json

    from diffice.config import save_config
    from diffice.errors import UserError
    from diffice.experiments.spec import slug

    cfg = row.cfg
    print(f"[{exp.name}] {row.label}: {cfg.cf.method}, tau {cfg.cf.tau} of {cfg.cf.respacing}, "
          f"lambda_c {list(cfg.cf.lambda_c)}, lambda_p {cfg.cf.lambda_p}")
    row.out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, row.out.parent / f".{slug(row.label)}.yaml")  # the row's resolved config, beside its folder
    if counterfactuals(cfg, wait=exp.wait) is None:
        return None  # a non-zero DDP process: rank zero reports the row
    metrics_path = row.out / "metrics.json"
    if not metrics_path.is_file():
        raise UserError(f"{metrics_path}: the run wrote no metrics")
    m = json.loads(metrics_path.read_text())
    m["method"] = row.label
    return m


def table(exp, results) -> str:
    """The paper's columns, one line per row, then the paired comparisons the file asks for."""
    from diffice.experiments.spec import slug
    from diffice.report.tables import markdown_report

    body = markdown_report([m for _, m in results])
    if exp.options.get("paired"):
        from diffice.report.compare import compare_markdown, compare_runs

        body += "\n## Paired comparisons (the same frames in both rows)\n"
        for a, b in exp.options["paired"]:
            res = compare_runs(exp.out_root / slug(str(a)), exp.out_root / slug(str(b)))
            res["method_a"], res["method_b"] = str(a), str(b)
            body += f"\n**{a}** vs **{b}**\n\n" + compare_markdown(res)
    return body
