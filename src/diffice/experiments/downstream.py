"""``kind: downstream`` experiments (``experiments/fetalflex_downstream.yaml``): make the frame
sets, then :func:`~diffice.downstream.study.run_study`.

The sets, each made once into ``{paths.runs}/experiments/NAME/`` and reused by a rerun:

* ``real_train`` / ``real_test``: the configured data set's train and test frames (normal; no
  augmentation), with their planes;
* ``abnormal_test``: ``diffice phantoms --anomalies`` frames (``downstream.abnormal_test_count``,
  seed ``data.phantom.seed + 1``: patients none of the models saw, anomalies drawn over their
  severity ranges) — the phantom renders them from the same definitions the layout operators
  draw, but no model ever sees one;
* ``synth_normal``: ``diffice synthesize --test`` samples of ``downstream.synth_layouts`` training
  layouts (``downstream.synth_per_layout`` each), labelled by their layout's plane;
* ``synth_abnormal``: ``diffice synthesize --test --anomaly all --with-sham --edits-only`` on
  ``downstream.synth_edit_frames`` training frames: every layout-expressible anomaly at its
  default severity, RePaint keeping the rest of the frame;
* ``rendered_abnormal`` (``downstream.upper_bound_count`` > 0; phantom data only): abnormal frames the
  phantom renders for the data set's *training* patients (all six anomalies, severities over their
  ranges) — the positives of the anomaly task's upper bound;
* ``paired_normal`` (``downstream.paired_negatives``): each abnormal frame's normal twins — the real frame it was edited from and
  its sham edit (the same region regenerated with the layout unchanged), so that the anomaly
  classifier cannot separate them by plane, quality or the sampler's texture, only by anatomy.

The synthesis model, its judge and steering segmenter are the config's (``synthesis.*``); the
experiment file points them at the demo pack for the CPU-sized run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffice.errors import UserError


def real_sets(cfg) -> dict:
    """``real_train`` and ``real_test`` FrameSets of the configured data (planes known)."""
    from diffice.data import DiffIceDataModule
    from diffice.downstream.frames import FrameSet
    from diffice.io import to_uint8

    dm = DiffIceDataModule(cfg)
    dm.setup()
    out = {}
    for split in ("train", "test"):
        ds = dm.dataset(split)
        images, planes, ids = [], [], []
        for i in range(len(ds)):
            item = ds[i]
            if int(item["plane"]) < 0:
                continue
            images.append(to_uint8(item["image"][0]))
            planes.append(int(item["plane"]))
            ids.append(str(item["id"]))
        if not images:
            raise UserError(f"data ({cfg.data.source}): no {split} frame with a known plane; the downstream study needs planes")
        out[f"real_{split}"] = FrameSet(np.stack(images), np.asarray(planes, dtype=np.int64), [""] * len(ids), ["real"] * len(ids), ids)
    return out


def _synthesize(cfg, work: Path, folder: str, keys: list[str], *, anomalies: bool = False, sham: bool = False) -> Path:
    """``diffice synthesize --test`` of ``cfg`` with ``keys`` into ``work/folder`` (no realism, no report);
    ``anomalies``: every layout-expressible anomaly as the edits, edits only (``sham``: and their sham twins)."""
    from diffice.config import load_config, save_config
    from diffice.experiments.synthesis import synthesize_test
    from diffice.synthesis.layouts import anomaly_specs

    out = work / folder
    layer = work / f".{folder}.yaml"
    save_config(cfg, layer)
    run_cfg = load_config([layer], keys)
    if anomalies:
        specs = anomaly_specs("all", None)
        run_cfg.synthesis.edits = specs + ([f"sham:{s}" for s in specs] if sham else [])  # recorded with the run
    synthesize_test(run_cfg, run_cfg.synthesis.ckpt, out, edits_only=anomalies, realism=False, report=False)
    return out


def _sources(edits):
    """The real frames the edits were made from (``edits/<frame>-<k>``), each once."""
    from diffice.downstream.frames import FrameSet

    seen: dict[str, int] = {}
    for k, i in enumerate(edits.ids):
        seen.setdefault(i.rsplit("/", 1)[-1].split("-")[0], k)
    first = list(seen.values())
    return FrameSet(edits.source[first], edits.plane[first], [""] * len(first), ["real"] * len(first),
                    [f"source/{f}" for f in seen])


def make_sets(cfg, work: Path, progress: bool = True) -> dict:
    """All five frame sets of the study (made into ``work`` once; reused when there)."""
    from diffice.data.export import write_anomalies
    from diffice.downstream.frames import concat, load_manifest, load_synthesis_run

    d = cfg.downstream
    size = list(cfg.data.image_size)
    sets = real_sets(cfg)
    abn = work / "abnormal-test"
    if not (abn / "manifest.csv").is_file():
        print(f"[downstream] rendering {d.abnormal_test_count} abnormal phantom frames (seed {int(cfg.data.phantom.seed) + 1})")
        write_anomalies(cfg, abn, int(d.abnormal_test_count), int(cfg.data.phantom.seed) + 1, progress=progress)
    sets["abnormal_test"] = load_manifest(abn / "manifest.csv", size=size)
    if int(d.upper_bound_count) > 0:
        if str(cfg.data.source) != "phantom":
            raise UserError(f"downstream.upper_bound_count={int(d.upper_bound_count)}: the upper bound renders abnormal "
                            f"frames of training patients, which only the phantom can (data.source is {cfg.data.source}); set it to 0")
        up = work / "rendered-abnormal-train"
        if not (up / "manifest.csv").is_file():
            print(f"[downstream] rendering {d.upper_bound_count} abnormal phantom frames of training patients (the upper bound)")
            write_anomalies(cfg, up, int(d.upper_bound_count), int(cfg.data.phantom.seed), progress=progress, split="train")
        sets["rendered_abnormal"] = load_manifest(up / "manifest.csv", size=size)
    print(f"[downstream] synthetic normal frames: {d.synth_layouts} training layouts x {d.synth_per_layout}")
    run = _synthesize(cfg, work, "synth-normal", [
        "synthesis.split=train", f"synthesis.limit={int(d.synth_layouts)}", f"synthesis.count={int(d.synth_per_layout)}",
        "synthesis.edits=[]"])
    sets["synth_normal"] = load_synthesis_run(run, "layouts", size=size)
    print(f"[downstream] synthetic abnormal frames: every anomaly on {d.synth_edit_frames} training frames (RePaint)")
    paired = bool(d.paired_negatives)
    run = _synthesize(cfg, work, "synth-abnormal", ["synthesis.split=train", f"synthesis.limit={int(d.synth_edit_frames)}"],
                      anomalies=True, sham=paired)
    edits = load_synthesis_run(run, "edits", size=size)
    ab = edits.abnormal
    sets["synth_abnormal"] = edits.subset(ab)
    if paired:
        sets["paired_normal"] = concat([edits.subset(~ab), _sources(edits.subset(ab))])
    for k, s in sets.items():
        kinds = sorted(set(s.anomaly) - {""})
        print(f"[downstream] {k}: {len(s)} frames" + (f" ({', '.join(kinds)})" if kinds else ""))
    return sets




# ----------------------------------------------------------------------------- the experiment kind


def run_row(exp, row) -> str:
    """``kind: downstream``: the row's frame sets (made once) and its study (resumed); the study's table."""
    from diffice.downstream.study import run_study

    cfg = row.cfg
    row.out.mkdir(parents=True, exist_ok=True)
    for key in ("ckpt", "judge_ckpt"):
        f = cfg.synthesis.get(key)
        if f and not Path(str(f)).is_file():
            raise UserError(f"synthesis.{key}={f}: not found (train it with make train-synthesis / make train-segmenter, or use the demo pack)")
    sets = make_sets(cfg, row.out, progress=bool(cfg.trainer.progress_bar))
    res = run_study(cfg, sets, row.out / "study", progress=bool(cfg.trainer.progress_bar), wait=exp.wait)
    return res["table"]


def table(exp, results) -> str:
    """Every row's study table under its label (each row's own is in its folder's study/table.md)."""
    return "\n".join(f"## {row.label}\n\n{body}" for row, body in results)
