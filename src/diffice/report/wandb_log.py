"""W&B logging of a finished run: scalar metrics, a per-frame table of pictures, Fig. 4 plots.

Offline by default (``wandb.mode=offline``, upload later with ``wandb sync``); nothing is
imported or written when the mode (``WANDB_MODE`` or ``cfg.wandb.mode``) is ``disabled``.
"""

from __future__ import annotations

import os
from pathlib import Path

from diffice.report.html import fig4_points, frame_strip
from diffice.report.records import num
from diffice.report.tables import QUALITY, method_name


def wandb_mode(cfg) -> str:
    return os.environ.get("WANDB_MODE") or (str(cfg.wandb.mode) if cfg is not None else "offline")


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """Flat ``cf/<key>`` scalars (None values left out) for ``wandb.log`` / the summary."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            out[f"cf/{key}"] = value
        elif key == "qd" and isinstance(value, dict):
            out.update({f"cf/qd_{c}": v for c, v in value.items() if v is not None})
    return out


def frame_table_rows(records: list[dict], n_iter: int) -> tuple[list[str], list[list]]:
    """Columns and rows of the per-frame table; PNG bytes (or None) stand where images go."""
    images = ["input", "seg_input"] + [f"iter{k}" for k in range(1, n_iter + 1)] + ["cf", "seg_cf", "diff", "target"]
    columns = ["index", "id"] + images + ["p_input", "p_cf", "flipped", "qs_input", "qs_cf", "qd_o", "lambda_c"]
    rows = []
    for rec in records:
        strip = {key: png for key, _, png in frame_strip(rec)}
        rows.append([int(rec["index"]), str(rec["id"])] + [strip.get(k) for k in images]
                    + [num(rec["p_input"]), num(rec["p_cf"]), bool(rec["flipped"]), num(rec["qs_input"]),
                       num(rec["qs_cf"]), num(rec["qs_cf"]) - num(rec["qs_input"]), num(rec["lambda_c"])])
    return columns, rows


def log_run(run_dir: Path, cfg, metrics: dict, records: list[dict], concepts: list[str]) -> str | None:
    """Log to W&B; returns the local run folder W&B wrote, or None when disabled."""
    mode = wandb_mode(cfg)
    if mode == "disabled":
        return None
    import io

    import wandb
    from PIL import Image

    from diffice.config import to_dict

    run = wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity, dir=str(run_dir), mode=mode,
                     name=f"{cfg.name}-{metrics['method']}", job_type="counterfactuals", config=to_dict(cfg))
    try:
        scalars = scalar_metrics(metrics)
        run.log(scalars)
        run.summary.update(scalars)
        columns, rows = frame_table_rows(records, int(metrics["iterations"]))

        def image(b):
            return wandb.Image(Image.open(io.BytesIO(b))) if b is not None else None

        table = wandb.Table(columns=columns, data=[[image(v) if isinstance(v, bytes) else v for v in r] for r in rows])
        run.log({"cf/frames": table})
        for name, pts in fig4_points(records, concepts).items():
            t = wandb.Table(columns=["input_score", "qd", "flipped"], data=[[a, d, f] for a, d, f in pts])
            title = f"Fig. 4 {method_name(metrics['method'])}: QD vs input {name}"
            run.log({f"cf/fig4_{name}": wandb.plot.scatter(t, "input_score", "qd", title=title)})
        if metrics.get("per_iteration"):
            cols = ["iteration"] + [k for k, _, _ in QUALITY]
            it = wandb.Table(columns=cols, data=[[r["iteration"]] + [r.get(k) for k, _, _ in QUALITY] for r in metrics["per_iteration"]])
            run.log({"cf/per_iteration": it})
            for key, _, _ in QUALITY:
                run.log({f"cf/iter_{key}": wandb.plot.line(it, "iteration", key, title=f"{key} per iteration")})
        return str(run.dir)
    finally:
        run.finish()
