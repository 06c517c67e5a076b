"""Finish a counterfactual run: ``results.csv``, ``metrics.json``, ``metrics.md``, ``report.html``, W&B.

:func:`finalize_run` is what the engine calls after its last frame and what ``diffice
evaluate`` calls later; both read only the run folder's files, so they give the same numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from diffice.errors import UserError
from diffice.io import atomic_write_text
from diffice.report.compute import EvalNets, compute_metrics, load_eval_nets, run_batch_size, run_concepts
from diffice.report.html import report_html, report_title
from diffice.report.records import concept_names, load_records, write_results_csv
from diffice.report.tables import markdown_report


def read_run_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()):
    """The run's resolved ``config.yaml`` (plus key=value overrides, e.g. moved checkpoint paths)."""
    from diffice.config import load_config

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{path}: not found; is {run_dir} a counterfactual run folder (cf.out)?")
    return load_config([path], list(overrides))


def metrics_json_text(metrics: dict) -> str:
    return json.dumps(metrics, indent=2, allow_nan=False) + "\n"


def _config_summary(cfg) -> dict[str, str]:
    try:
        cf = cfg.cf
        return {"τ": f"{cf.tau} of {cf.respacing}", "λc": str(list(cf.lambda_c)), "λp": str(cf.lambda_p),
                "adaptive": str(cf.adaptive), "image size": "x".join(str(v) for v in cfg.data.image_size),
                "seed": str(cfg.seed)}
    except Exception:  # noqa: BLE001 - a summary is optional
        return {}


def finalize_run(run_dir: str | Path, cfg=None, *, nets: EvalNets | str | None = "auto", log_wandb: bool = True,
                 frames: int = 6, progress: bool = True) -> dict:
    """Rebuild results.csv, compute all metrics, write metrics.json / metrics.md / report.html, log W&B.

    ``cfg``: the run's config (default: ``{run_dir}/config.yaml``). ``nets``: ``"auto"`` rebuilds
    the feature networks and oracle from the checkpoints in ``cfg.cf``; an :class:`EvalNets`
    uses those; ``None`` skips the image metrics (FID, FSD, SonoSim are then null).
    Returns ``dict(metrics, fr, mqd, n_closer_to_target, n_target, report, metrics_json,
    results_csv, table)`` for the caller's summary.
    """
    run_dir = Path(run_dir)
    records = load_records(run_dir)
    cfg = cfg if cfg is not None else read_run_config(run_dir)
    results = write_results_csv(run_dir, records)
    if nets == "auto":
        nets = load_eval_nets(cfg, need_oracle=not all(r.get("qs_iters") for r in records))
    metrics = compute_metrics(records, nets=nets if isinstance(nets, EvalNets) else None,
                              batch_size=run_batch_size(cfg), concepts=run_concepts(cfg), progress=progress)
    metrics_path = atomic_write_text(run_dir / "metrics.json", metrics_json_text(metrics))
    table = markdown_report([metrics])
    atomic_write_text(run_dir / "metrics.md", table)
    title = report_title(run_dir, metrics["method"])
    concepts = concept_names(records, run_concepts(cfg))
    page = report_html(metrics, records, concepts, title, _config_summary(cfg), frames=frames)
    report = atomic_write_text(run_dir / "report.html", page)
    if log_wandb:
        from diffice.report.wandb_log import log_run

        try:
            log_run(run_dir, cfg, metrics, records, concepts)
        except Exception as err:  # noqa: BLE001 - the files are written; W&B is a copy
            print(f"warning: W&B logging failed ({type(err).__name__}: {err}); metrics.json and report.html "
                  "are written", file=sys.stderr)
    return {"metrics": metrics, "fr": metrics["fr"], "mqd": metrics["mqd"],
            "n_closer_to_target": metrics["n_closer_to_target"], "n_target": metrics["n_target"],
            "n_closer_sector": metrics.get("n_closer_sector"), "n_target_sector": metrics.get("n_target_sector"),
            "n_adversarial": metrics.get("n_adversarial"),
            "report": str(report), "metrics_json": str(metrics_path), "results_csv": str(results), "table": table}
