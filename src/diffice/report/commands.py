"""Command entry points of the report area, called from ``diffice.commands.counterfactual``:

    diffice evaluate RUN_DIR [RUN_DIR ...] [key=value ...] [--no-images] [--no-wandb] [--check] [--table OUT.md]
    diffice reader-study RUN_DIR [--pairs 50] [--seed 0] [--force]          (counterfactual run)
    diffice reader-study RUN_DIR [--task real-vs-synthetic|edited] [--single] [--count N] [--seed 0] [--force]  (synthesis run)
    diffice reader-score RUN_DIR ANSWERS.csv [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffice.errors import UserError
from diffice.io import atomic_write_text
from diffice.runlock import run_lock


def _diff(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in _diff(a, b, f"{prefix}{i}.")]
    if isinstance(old, float) and isinstance(new, float):
        # relative 1e-6: GPU feature extraction may differ in the last digits between runs
        return [] if abs(old - new) <= 1e-6 * max(1.0, abs(old)) else [f"{prefix[:-1]}: {old} -> {new}"]
    return [] if old == new else [f"{prefix[:-1]}: {old} -> {new}"]


def evaluate_main(argv: list[str]) -> int:
    from diffice.report.tables import markdown_report

    p = argparse.ArgumentParser(prog="diffice evaluate",
                                description="Recompute a counterfactual run's metrics, results.csv and report.html "
                                            "from its files; several runs give one table (one row per method).")
    p.add_argument("args", nargs="+", help="run folders (cf.out), then key=value overrides of their config "
                                           "(e.g. cf.guide_ckpt=... if the checkpoints moved)")
    p.add_argument("--no-images", action="store_true", help="skip FID, FSD, SonoSim (no feature networks needed)")
    p.add_argument("--no-wandb", action="store_true", help="do not log to W&B")
    p.add_argument("--check", action="store_true", help="only compare with the run's metrics.json; exit 1 if they differ")
    p.add_argument("--table", type=Path, help="also write the combined markdown table here")
    p.add_argument("--frames", type=int, default=6, help="frames shown in report.html (default 6)")
    ns = p.parse_intermixed_args(argv)
    runs = [a for a in ns.args if "=" not in a]
    overrides = [a for a in ns.args if "=" in a]
    if not runs:
        raise UserError("evaluate: give at least one run folder")
    all_metrics, differ = [], False
    for run in runs:
        if ns.check or not Path(run).is_dir():  # --check writes nothing (it reads a read-only run too)
            metrics, diffs = _evaluate_run(run, overrides, ns)
        else:
            with run_lock(run, "diffice evaluate"):  # one writer of results.csv, metrics.*, report.html
                metrics, diffs = _evaluate_run(run, overrides, ns)
        differ |= diffs
        all_metrics.append(metrics)
    table = markdown_report(all_metrics)
    print()
    print(table)
    if ns.table:
        atomic_write_text(ns.table, table)
    return 1 if differ else 0


def _evaluate_run(run: str, overrides: list[str], ns) -> tuple[dict, bool]:
    """``diffice evaluate`` of one run folder (its lock held): its metrics, and whether ``--check`` found them changed."""
    from diffice.report.compute import compute_metrics, load_eval_nets, run_batch_size, run_concepts
    from diffice.report.finalize import finalize_run, read_run_config
    from diffice.report.records import load_records

    cfg = read_run_config(run, overrides)
    if not ns.check:
        out = finalize_run(run, cfg, nets=None if ns.no_images else "auto", log_wandb=not ns.no_wandb, frames=ns.frames)
        print(f"{run}: wrote results.csv, metrics.json, metrics.md, report.html")
        return out["metrics"], False
    old_path = Path(run) / "metrics.json"
    if not old_path.is_file():
        raise UserError(f"{old_path}: not found; run 'diffice evaluate {run}' without --check to write it")
    records = load_records(run)
    nets = None if ns.no_images else load_eval_nets(cfg, need_oracle=not all(r.get("qs_iters") for r in records))
    metrics = compute_metrics(records, nets=nets, batch_size=run_batch_size(cfg), concepts=run_concepts(cfg))
    diffs = _diff(json.loads(old_path.read_text()), json.loads(json.dumps(metrics)))
    print(f"{run}: " + ("metrics.json reproduced" if not diffs else "differs:\n  " + "\n  ".join(diffs)))
    return metrics, bool(diffs)


def reader_study_main(argv: list[str]) -> int:
    from diffice.report.reader_synthesis import TASKS

    p = argparse.ArgumentParser(prog="diffice reader-study",
                                description="Make a blinded reader-study page: from a counterfactual run, input / "
                                            "counterfactual pairs with QD_O > 0; from a synthesis run (its run.json "
                                            "says so), real vs synthetic frames or normal vs edited.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--pairs", "--count", dest="count", type=int, default=None,
                   help="number of pairs or frames (counterfactual: 50, the paper's; synthesis: up to 50, as many "
                        "as the run allows)")
    p.add_argument("--task", default=None, metavar="|".join(TASKS),
                   help="synthesis runs: real-vs-synthetic (default) or edited (source and edited frame)")
    p.add_argument("--single", action="store_true", help="--task edited: one frame at a time, normal or edited")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an existing study of this run (and task)")
    ns = p.parse_intermixed_args(argv)
    run = ns.run_dir
    if not run.is_dir():
        raise UserError(f"{run}: run folder not found (give the folder of a counterfactual or a synthesis run)")
    with run_lock(run, "diffice reader-study"):  # one writer: the study's page and key, or a run's frames
        return _reader_study(run, ns)


def _reader_study(run: Path, ns) -> int:
    from diffice.report.reader import make_study
    from diffice.report.reader_synthesis import is_synthesis_run, make_synthesis_study

    if is_synthesis_run(run):
        key = make_synthesis_study(run, task=ns.task or "real-vs-synthetic", count=ns.count, seed=ns.seed,
                                   single=ns.single, force=ns.force)
        unit = key["unit"]
        print(f"study {key['study']} ({key['task']}): {len(key[unit + 's'])} {'pairs' if unit == 'pair' else 'frames'}\n"
              f"  page for the reader: {key['page']}\n  key (do not share): {key['key']}\n"
              f"  score with: diffice reader-score {run} ANSWERS.csv")
        return 0
    if not (run / "frames").is_dir():
        raise UserError(f"{run}: neither a counterfactual run (no frames/) nor a synthesis run (run.json); "
                        "give the cf.out folder of 'diffice counterfactuals' or the --out folder of 'diffice synthesize'")
    if ns.task is not None or ns.single:
        raise UserError(f"{run}: --task and --single are for synthesis runs; this is a counterfactual run")
    pairs = 50 if ns.count is None else ns.count
    key = make_study(run, pairs=pairs, seed=ns.seed, force=ns.force)
    n = len(key["pairs"])
    if n < pairs:
        print(f"note: only {n} frames have QD_O > 0; the study has {n} pairs, not {pairs}")
    print(f"study {key['study']}: {n} pairs\n  page for the reader: {key['page']}\n"
          f"  key (do not share): {key['key']}\n  score with: diffice reader-score {run} ANSWERS.csv")
    return 0


def _share(s: dict, confidence: float) -> str:
    return f"{s['k']} of {s['n']} = {s['fraction']:.3f}, {confidence:.0%} CI [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"


def reader_score_main(argv: list[str]) -> int:
    from diffice.report.reader import score_answers

    p = argparse.ArgumentParser(prog="diffice reader-score",
                                description="Score a reader's answers against the key of the study they answer "
                                            "(a counterfactual or a synthesis run's).")
    p.add_argument("run_dir", type=Path)
    p.add_argument("answers", type=Path, help="the CSV the study page downloaded")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    ns = p.parse_intermixed_args(argv)
    s = score_answers(ns.run_dir, ns.answers)
    if ns.json:
        print(json.dumps(s, indent=1))
        return 0
    who = ", ".join(s["readers"]) or "reader"
    ci = f"{s['confidence']:.0%} CI [{s['ci_low']:.3f}, {s['ci_high']:.3f}] (Clopper-Pearson)"
    if "task" not in s:
        print(f"study {s['study']} ({who}): counterfactual preferred in {s['preferred_cf']} of {s['answered']} "
              f"answered pairs ({s['pairs']} in the study) = {s['fraction_cf']:.3f}, "
              f"{ci}, binomial test vs 0.5: p = {s['p_value']:.3g}")
        return 0
    unit = "pairs" if s["unit"] == "pair" else "frames"
    print(f"study {s['study']} ({s['task']}, {who}): right in {s['correct']} of {s['answered']} answered {unit} "
          f"({s['items']} in the study) = accuracy {s['accuracy']:.3f}, {ci}, "
          f"binomial test vs 0.5 (chance): p = {s['p_value']:.3g}")
    if s["fooled"]:
        f = s["fooled"]
        print(f"  {f['truth']} frames called {f['called']}: {_share(f, s['confidence'])}")
    for anomaly, a in s["by_anomaly"].items():
        print(f"  {anomaly}: right in {_share(a, s['confidence'])}, binomial test vs 0.5: p = {a['p_value']:.3g}")
    return 0
