"""W&B logging of a finished counterfactual run: scalar metrics, the per-frame table of pictures,
Fig. 4 plots, per-iteration curves, and its lineage (data set, DDPM, guide and oracle used; the
run's outputs as a ``counterfactuals`` artifact). See ``docs/wandb.md``.

Offline by default (``wandb.mode=offline``, upload later with ``wandb sync``); nothing is
imported or written when the mode (``WANDB_MODE`` or ``cfg.wandb.mode``) is ``disabled``. The
generic helpers (picture tables, artifacts) are in :mod:`diffice.tracking`.
"""

from __future__ import annotations

from pathlib import Path

from diffice.errors import UserError
from diffice.report.html import fig4_points, frame_strip
from diffice.report.records import num
from diffice.report.tables import QUALITY, method_name
from diffice.tracking import (
    finish_run,
    init_run,
    log_outputs_artifact,
    log_picture_table,
    run_folder,
    staged_in_run,
    use_checkpoint,
    use_dataset,
    wandb_mode,
    warn,
)

# the checkpoints a counterfactual run uses: config key -> model kind
CF_CHECKPOINTS = (("ddpm_ckpt", "ddpm"), ("guide_ckpt", "classifier"), ("oracle_ckpt", "oracle"))
# the run-folder files its artifact references
CF_OUTPUTS = ("config.yaml", "results.csv", "metrics.json", "metrics.md", "report.html", "frames")


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
        elif key == "intervals" and isinstance(value, dict):  # 95 % bounds beside each rate and mean
            for name, iv in value.items():
                out.update({f"cf/ci/{name}_{end}": iv[end] for end in ("low", "high") if iv.get(end) is not None})
    return out


ARTIFACT_KEYS = 100  # W&B refuses an artifact with more metadata keys


def artifact_metadata(metrics: dict, n_frames: int, scalars: dict) -> dict:
    """The run's headline numbers for its artifact: the point values first, the interval bounds
    (``cf/ci/...``) only while W&B's limit of 100 keys allows (they stay in the run's summary)."""
    meta = {"method": metrics["method"], "n_frames": n_frames}
    for key in sorted(scalars, key=lambda k: ("/ci/" in k, k)):
        if len(meta) >= ARTIFACT_KEYS:
            break
        meta[key] = scalars[key]
    return meta


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
    if wandb_mode(cfg) == "disabled":
        return None
    import wandb

    run = init_run(cfg, name=f"{cfg.name}-{metrics['method']}", job_type="counterfactuals", dir=run_dir)
    with staged_in_run(run):  # the tables W&B makes artifacts of are staged in the run folder, too
        try:
            use_dataset(run, cfg)
            for key, kind in CF_CHECKPOINTS:
                try:
                    use_checkpoint(run, cfg.cf[key], kind)
                except UserError as err:  # e.g. evaluated after the checkpoints moved: log the rest
                    warn(f"W&B lineage: cf.{key} not recorded ({err})")
            scalars = scalar_metrics(metrics)
            run.log(scalars)
            run.summary.update(scalars)
            columns, rows = frame_table_rows(records, int(metrics["iterations"]))
            log_picture_table(run, "cf/frames", columns, rows, label_column="id")
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
            log_outputs_artifact(run, f"counterfactuals-{cfg.name}-{metrics['method']}", "counterfactuals", run_dir,
                                 CF_OUTPUTS, metadata=artifact_metadata(metrics, len(records), scalars))
            return str(run_folder(run))
        finally:
            finish_run(run)  # returns once the local run folder is complete


# the run-folder files a synthesis run's artifact references
SYN_OUTPUTS = ("config.yaml", "results.csv", "metrics.json", "report.html", "layouts", "edits")


def log_synthesis(out: Path, cfg, metrics: dict, layouts: list[dict], edits: list[dict]) -> str | None:
    """Log a synthesis run: scalars, a layouts table (layout, real frame, sample, judge overlay,
    Dice per structure) and an edits table (source, edited layout, edited frame, difference)
    as picture tables, its lineage (data set, synthesis model, steering segmenter, judge) and
    its outputs as a ``synthesis`` artifact. None when W&B is disabled."""
    if wandb_mode(cfg) == "disabled":
        return None
    out = Path(out)
    classes = list(cfg.data.classes)
    run = init_run(cfg, name=f"{cfg.name}-synthesis", job_type="synthesis", dir=out)
    with staged_in_run(run):
        try:
            use_dataset(run, cfg)
            for path, kind in ((metrics.get("ckpt"), "synthesis"), (cfg.synthesis.segmenter_ckpt if metrics.get("two_stage") else None, None),
                               (metrics.get("judge"), None)):
                if path:
                    try:
                        use_checkpoint(run, path, kind)
                    except UserError as err:
                        warn(f"W&B lineage: {path} not recorded ({err})")
            scalars = {f"synthesis/{k}": v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            for key in ("dice", "dice_stage1", "dice_real"):
                scalars.update({f"synthesis/{key}_{c}": v for c, v in (metrics.get(key) or {}).items() if v is not None})
            run.log(scalars)
            run.summary.update(scalars)

            def png(p: Path):
                return p.read_bytes() if p.is_file() else None

            rows = []
            for r in layouts:
                d = out / "layouts" / f"{int(r['index']):06d}"
                for j, s in enumerate(r["samples"]):
                    rows.append([f"{int(r['index']):06d}-{j}", int(r["index"]), str(r["id"]), r.get("plane"), png(d / "layout.png"),
                                 png(d / "real.png"), png(d / f"stage1_{j}.png"), png(d / f"sample_{j}.png"), png(d / f"judge_{j}.png"),
                                 *[(s.get("judge_dice") or {}).get(c) for c in classes[1:]]])
            if rows:
                log_picture_table(run, "synthesis/layouts", ["sample", "index", "id", "plane", "layout", "real", "stage1", "final", "judge",
                                                             *[f"dice_{c}" for c in classes[1:]]], rows, label_column="sample")
            erows = []
            for r in edits:
                d = out / "edits" / r["name"]
                erows.append([r["name"], r["edit"], png(d / "source.png"), png(d / "layout_after.png"), png(d / "edited.png"),
                              png(d / "diff.png"), r["psnr_outside"], r.get("edit_accuracy")])
            if erows:
                log_picture_table(run, "synthesis/edits", ["name", "edit", "source", "layout_after", "edited", "diff", "psnr_outside",
                                                           "edit_accuracy"], erows, label_column="name")
            log_outputs_artifact(run, f"synthesis-{cfg.name}", "synthesis", out, SYN_OUTPUTS,
                                 metadata={"layouts": len(layouts), "edits": len(edits), **scalars})
            return str(run_folder(run))
        finally:
            finish_run(run)  # returns once the local run folder is complete
