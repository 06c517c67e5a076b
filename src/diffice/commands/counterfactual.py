"""``diffice counterfactuals`` (the engine) and the run-folder commands of the report."""

from __future__ import annotations

import argparse
import importlib
import math
from pathlib import Path


def _summary_from_records(records: list[dict]) -> dict:
    """Fallback summary when the report package is unavailable (same definitions as the paper)."""
    nsp = [r for r in records if (r.get("p_input") or 0.0) < 0.5]
    fr = sum(bool(r["flipped"]) for r in nsp) / len(nsp) if nsp else math.nan
    n = len(records)
    scored = [r for r in records if r.get("qs_input") is not None and r.get("qs_cf") is not None]
    mqd = sum((r["qs_cf"] - r["qs_input"]) for r in scored if r["qs_input"] < 0.5) / n if scored else math.nan
    tgt = [r for r in records if r.get("target_l1_cf") is not None]
    closer = sum(r["target_l1_cf"] < r["target_l1_input"] for r in tgt)
    return {"fr": fr, "mqd": mqd, "n_closer_to_target": closer, "n_target": len(tgt), "report": None}


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _finalizer():
    """``finalize_run(run_dir, cfg) -> summary`` of the report area, or None if it is missing."""
    for mod in ("diffice.report.commands", "diffice.report.finalize"):
        try:
            return importlib.import_module(mod).finalize_run
        except (ImportError, AttributeError):
            continue
    return None


def cmd_counterfactuals(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="diffice counterfactuals",
        description="Generate SP counterfactuals of the selected frames (cf.split, cf.label, cf.limit) "
        "with cf.method (diff-ice | diff-ice1 | diff-ice1-xt | dime) into cf.out, then compute the "
        "metrics and the report. A rerun into the same cf.out skips finished frames.",
    )
    p.add_argument("args", nargs="*", help="config files (*.yaml) and key=value overrides, in order")
    p.add_argument("--no-report", action="store_true", help="only generate; skip metrics.json and report.html")
    p.add_argument("--wait", action="store_true", help="if another run writes into cf.out, wait for it to finish "
                   "(default: stop with a message naming it)")
    ns = p.parse_intermixed_args(argv)

    from diffice.commands.pack_fallback import use_pack_if_untrained
    from diffice.config import config_from_args
    from diffice.counterfactual.outputs import read_records
    from diffice.modules.counterfactual import run_counterfactuals
    from diffice.runlock import run_lock

    cfg = config_from_args(ns.args)
    for line in use_pack_if_untrained(cfg):
        print(line)
    summary = None
    with run_lock(cfg.cf.out, "diffice counterfactuals", wait=ns.wait):  # the run and its report: one writer
        res = run_counterfactuals(cfg)
        if res is None:  # a non-zero DDP rank: rank zero reports
            return 0
        out, indices = res
        if not ns.no_report:
            finalize_run = _finalizer()
            if finalize_run is None:
                print("note: diffice.report is not available; wrote the frames and results.csv only "
                      "(run 'diffice evaluate RUN_DIR' once it is)")
            else:
                summary = finalize_run(out, cfg)
    if summary is None:
        summary = _summary_from_records(read_records(out, indices))
    records = read_records(out, indices)
    nfe = sum(r["nfe"] for r in records) / max(1, len(records))
    print(f"{cfg.cf.method}: {len(records)} frames in {out}")
    iv = (summary.get("metrics") or {}).get("intervals") or {}

    def ci(key: str) -> str:  # " [low, high]": the 95 % interval, when the report computed one
        b = iv.get(key) or {}
        return f" [{b['low']:.2f}, {b['high']:.2f}]" if b.get("low") is not None else ""

    print(f"  flip ratio {_fmt(summary.get('fr'))}{ci('fr')}   MQD {_fmt(summary.get('mqd'))}{ci('mqd')}   "
          f"denoiser evaluations {nfe:.0f} per frame (mean); 95 % intervals in brackets")
    if summary.get("n_target"):
        print(f"  closer to the ground-truth target: {summary['n_closer_to_target']} of {summary['n_target']} frames"
              f"{ci('closer_to_target')} (inside the fault's footprint)"
              + (f", {summary['n_closer_sector']} of {summary['n_target_sector']}{ci('closer_sector')} (whole sector)"
                 if summary.get("n_target_sector") else ""))
    dice = (summary.get("metrics") or {}).get("anatomy_dice") or {}
    if dice:
        print("  anatomy kept (segmentation Dice input vs counterfactual): "
              + ", ".join(f"{k} {_fmt(v)}{ci('anatomy_dice_' + k)}" for k, v in dice.items()))
    if summary.get("n_adversarial") is not None:
        print(f"  adversarial texture (high-frequency energy beyond real SP frames): {summary['n_adversarial']} of "
              f"{len(records)} frames{ci('adversarial_fraction')}")
    print(f"  results: {Path(out) / 'results.csv'}")
    if summary.get("report"):
        print(f"  report:  {summary['report']}")
    return 0


def cmd_evaluate(argv: list[str]) -> int:
    from diffice.report.commands import evaluate_main

    return evaluate_main(argv)


def cmd_compare(argv: list[str]) -> int:
    from diffice.report.compare import compare_main

    return compare_main(argv)


def cmd_reader_study(argv: list[str]) -> int:
    from diffice.report.commands import reader_study_main

    return reader_study_main(argv)


def cmd_reader_score(argv: list[str]) -> int:
    from diffice.report.commands import reader_score_main

    return reader_score_main(argv)
