"""The downstream study: timm classifiers trained with and without synthetic frames.

Inputs (:func:`run_study`): five :class:`~diffice.downstream.frames.FrameSet` s —

* ``real_train``: real normal frames with planes (at most ``downstream.real_train_limit`` of them
  are used, a plane-stratified draw that changes with the seed);
* ``real_test``: real normal frames (plane accuracy; the normals of the anomaly test);
* ``abnormal_test``: real-rendered abnormal frames (anomaly names), never seen in training;
* ``synth_normal``: synthetic normal frames with planes (at most ``synth_normal_count``);
* ``synth_abnormal``: synthetic abnormal frames (at most ``synth_abnormal_count``);
* ``rendered_abnormal`` (optional): abnormal frames the phantom renders for *training* patients
  (at most ``synth_abnormal_count`` of them a seed) — the anomaly task's upper bound;
* ``paired_normal`` (optional): their pixel-paired normal twins — the real frames they were edited
  from and sham edits (the same region regenerated, the layout unchanged) — added to the anomaly
  classifier's negatives, so that only the anatomy separates a positive from its twins.

Rows (model × seed × task × condition), three trainings per model and seed (four with the upper bound):

============  ===============  ====================================================================
task          condition        what is trained, and the score
============  ===============  ====================================================================
plane         real             3-plane classifier on real_train; accuracy and balanced accuracy on real_test
anomaly       real             the same network as an out-of-distribution detector: score = 1 - max softmax
                               probability (MSP, Hendrycks & Gimpel 2017); AUROC of real_test (0) vs
                               abnormal_test (1), per anomaly too
plane         real+synthetic   3-plane classifier on real_train + synth_normal; same test
anomaly       real+synthetic   binary classifier: real_train (+ synth_normal when
                               ``synthetic_negatives``) = 0 vs synth_abnormal = 1; score = p(abnormal);
                               AUROC as above, accuracy / balanced accuracy at 0.5
anomaly       real+rendered    (with ``rendered_abnormal``) the same binary classifier with the rendered
                               abnormal frames as positives instead of the synthetic ones: the upper
                               bound a synthetic frame could reach (the anomalies themselves, drawn by
                               the renderer the test frames come from)
============  ===============  ====================================================================

Batches are class-balanced (``balance``) and, inside a class holding both real and synthetic
frames, a ``synthetic_share`` of the draws are synthetic. The synthetic normal frames are among
the anomaly classifier's negatives by default so that "synthetic" does not predict "abnormal".

Output folder ``out``: ``run.json`` (the stamp, :mod:`diffice.runfolder`: the settings and a
digest of every frame set; a folder of other settings is refused), ``rows.csv`` (rewritten atomically after each training: a killed run
resumes where it stopped, redoing nothing), ``summary.csv`` (mean, sd, n per model, task,
condition and metric, and the paired gains), ``table.md`` (:func:`write_table`). Models and seeds
may be added to a finished study: its rows are kept and only the new ones are trained.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffice.downstream.frames import FrameSet, concat
from diffice.downstream.metrics import per_anomaly_auroc
from diffice.downstream.recipes import RECIPE_KEYS, check_recipes, check_training, model_recipe
from diffice.downstream.rows import PER_ANOMALY, REAL, ROWS, SYNTH, UNITS, UPPER, read_rows
from diffice.downstream.rows import number as _num
from diffice.downstream.table import SUMMARY, summarize, write_table
from diffice.errors import UserError
from diffice.metrics.classification import accuracy, auroc, balanced_accuracy
from diffice.runfolder.stamp import RunKind

SETS = ("real_train", "real_test", "abnormal_test", "synth_normal", "synth_abnormal")
PAIRED = "paired_normal"  # optional: the synthetic abnormal frames' normal twins (sources, sham edits), anomaly negatives
RENDERED = "rendered_abnormal"  # optional: rendered abnormal frames of training patients (the upper bound's positives)
OPTIONAL = (PAIRED, RENDERED)
NUM_PLANES = 3
# the keys of downstream.* that change a row's numbers (models and seeds only choose rows)
SETTING_KEYS = ("steps", "batch_size", "lr", "weight_decay", "schedule", "augment", "balance", "synthetic_share",
                "image_size", "real_train_limit", "synth_normal_count", "synth_abnormal_count", "synthetic_negatives",
                "warmup", "flips", "label_smoothing", "scale", "model_kwargs", "recipes")
# keys added after studies existed, with the value that trains as before (a stamp without them holds these)
ADDED = (("warmup", 0.05), ("flips", False), ("label_smoothing", 0.0), ("scale", 1.0), ("model_kwargs", {}),
         ("recipes", {}))


def _study_json_settings(path: Path) -> dict:
    """The settings of a study folder an older diffice stamped with ``study.json``."""
    old = json.loads(path.read_text())
    old = old if isinstance(old, dict) else {}
    return {**(old.get("settings") or {}), "data": old.get("data") or {}}


RUN_KIND = RunKind("downstream", "downstream study", items=(ROWS,), fix="set downstream.out to a new folder or delete it",
                   legacy=("study.json", _study_json_settings), added=ADDED)


# ----------------------------------------------------------------------------- settings


def study_settings(cfg) -> dict:
    """The downstream settings as plain values (``cfg``: the full config, or its downstream section)."""
    from omegaconf import DictConfig, OmegaConf

    ds = cfg.downstream if "downstream" in cfg else cfg
    if isinstance(ds, DictConfig):
        ds = OmegaConf.to_container(ds, resolve=True)
    ds = dict(ds)
    out = {"models": [str(m) for m in ds["models"]], "seeds": [int(s) for s in ds["seeds"]]}
    for key in SETTING_KEYS:
        out[key] = ds[key]
    out["image_size"] = [int(v) for v in out["image_size"]]
    if not out["models"]:
        raise UserError("downstream.models: no model to train")
    if not out["seeds"]:
        raise UserError("downstream.seeds: no seed")
    if len(set(out["models"])) != len(out["models"]) or len(set(out["seeds"])) != len(out["seeds"]):
        raise UserError("downstream.models / downstream.seeds: a name or seed is listed twice")
    check_training({k: out[k] for k in RECIPE_KEYS}, "downstream.")
    out["model_kwargs"] = dict(out["model_kwargs"] or {})
    out["recipes"] = check_recipes(out["recipes"])
    share = out["synthetic_share"]
    if share is not None and not 0.0 <= float(share) <= 1.0:
        raise UserError(f"downstream.synthetic_share: must lie in [0, 1] or be null, got {share}")
    return out


# ----------------------------------------------------------------------------- frame sets


def _check_sets(sets: dict[str, FrameSet], size: Sequence[int]) -> dict[str, FrameSet]:
    missing = [k for k in SETS if k not in sets]
    if missing:
        raise UserError(f"downstream study: frame set '{missing[0]}' is missing (need {', '.join(SETS)})")
    out = {}
    for name in (*SETS, *OPTIONAL):
        if name not in sets:
            continue
        s = sets[name]
        where = s.meta.get("path") or name
        if len(s) == 0:
            raise UserError(f"{where}: the {name} frame set is empty")
        ab = s.abnormal
        if name in ("real_train", "real_test", "synth_normal", PAIRED) and ab.any():
            raise UserError(f"{where}: the {name} set holds {int(ab.sum())} abnormal frames "
                            f"(e.g. {s.ids[int(np.flatnonzero(ab)[0])]}: {s.anomaly[int(np.flatnonzero(ab)[0])]}); "
                            f"it must be normal")
        if name in ("abnormal_test", "synth_abnormal", RENDERED) and not ab.all():
            raise UserError(f"{where}: the {name} set holds {int((~ab).sum())} normal frames "
                            f"(e.g. {s.ids[int(np.flatnonzero(~ab)[0])]}); it must be abnormal")
        out[name] = s.resized(size)
    for name in ("real_train", "real_test", "synth_normal"):
        if not (out[name].plane >= 0).any():
            raise UserError(f"{out[name].meta.get('path') or name}: no {name} frame has a plane")
    return out


def _draw(s: FrameSet, limit: int | None, rng: np.random.Generator, by: np.ndarray | None = None) -> FrameSet:
    """``limit`` frames of ``s`` (all if None or enough), in a random order; stratified by ``by``
    (round robin over its values, each in random order)."""
    n = len(s)
    if limit is None or int(limit) >= n:
        return s
    limit = int(limit)
    if by is None:
        return s.subset(np.sort(rng.permutation(n)[:limit]))
    groups = [rng.permutation(np.flatnonzero(by == v)) for v in np.unique(by)]
    order = [g[i] for i in range(max(len(g) for g in groups)) for g in groups if i < len(g)]
    return s.subset(np.sort(np.array(order[:limit])))


def seed_sets(sets: dict[str, FrameSet], st: dict, seed: int) -> dict[str, FrameSet]:
    """The training frames of one seed: real_train (planes known) and the synthetic sets drawn
    down to their limits, with a generator of the seed (the test sets are whole)."""
    rng = np.random.default_rng([int(seed), 20240514])
    real = sets["real_train"].subset(sets["real_train"].plane >= 0)
    out = {
        "real_train": _draw(real, st["real_train_limit"], rng, real.plane),
        "synth_normal": _draw(sets["synth_normal"], st["synth_normal_count"], rng, sets["synth_normal"].plane),
        "synth_abnormal": _draw(sets["synth_abnormal"], st["synth_abnormal_count"], rng,
                                np.array(sets["synth_abnormal"].anomaly, dtype=object)),
    }
    if PAIRED in sets:
        out[PAIRED] = _draw(sets[PAIRED], st["synth_abnormal_count"], rng)
    if RENDERED in sets:  # as many positives as the synthetic arm has, the same anomaly-stratified draw
        out[RENDERED] = _draw(sets[RENDERED], st["synth_abnormal_count"], rng, np.array(sets[RENDERED].anomaly, dtype=object))
    return out


def group_weights(labels: np.ndarray, origin: Sequence[str], balance: bool, synthetic_share) -> np.ndarray:
    """Per-frame sampling weights: every class the same share when ``balance`` (else its share of
    the frames); inside a class with both origins, synthetic frames get ``synthetic_share`` of the
    class's draws (None: their share of the frames); uniform inside a (class, origin) group."""
    labels = np.asarray(labels)
    synth = np.array([o == "synthetic" for o in origin], dtype=bool)
    w = np.zeros(len(labels), dtype=np.float64)
    classes = np.unique(labels)
    for c in classes:
        in_c = labels == c
        mass = 1.0 / len(classes) if balance else in_c.mean()
        n_s, n_r = int((in_c & synth).sum()), int((in_c & ~synth).sum())
        if synthetic_share is None or n_s == 0 or n_r == 0:
            w[in_c] = mass / in_c.sum()
        else:
            share = float(synthetic_share)
            w[in_c & synth] = mass * share / n_s
            w[in_c & ~synth] = mass * (1.0 - share) / n_r
    return w


# ----------------------------------------------------------------------------- rows


def _key(row: dict) -> tuple[str, int, str, str]:
    return str(row["model"]), int(row["seed"]), str(row["task"]), str(row["condition"])


def _anomaly_metrics(scores: np.ndarray, test: FrameSet) -> dict:
    y = test.abnormal.astype(int)
    row = {"auroc": auroc(scores, y)}
    for name, v in per_anomaly_auroc(scores, test.anomaly).items():
        row[PER_ANOMALY + name] = v
    return row


def _plane_metrics(probs: np.ndarray, planes: np.ndarray) -> dict:
    pred = probs.argmax(1)
    return {"accuracy": accuracy(planes, pred), "balanced_accuracy": balanced_accuracy(planes, pred)}


TrainFn = Callable[..., Any]


def _train_unit(task: str, condition: str, model: str, seed: int, st: dict, train_sets: dict[str, FrameSet],
                tests: dict[str, FrameSet], device, train_fn: TrainFn, predict_fn, on_step) -> list[dict]:
    """One training and the rows it gives."""
    real = train_sets["real_train"]
    if task == "plane":
        parts = [real]
        if condition == SYNTH:
            sn = train_sets["synth_normal"]
            parts.append(sn.subset(sn.plane >= 0))
        data = concat(parts)
        labels, k = data.plane, NUM_PLANES
    else:
        negatives = [real] + ([train_sets["synth_normal"]] if bool(st["synthetic_negatives"]) else [])
        if condition == UPPER:  # the rendered anomalies against the real frames only
            data = concat([real, train_sets[RENDERED]])
        else:
            negatives += [train_sets[PAIRED]] if PAIRED in train_sets else []
            data = concat([*negatives, train_sets["synth_abnormal"]])
        labels, k = data.abnormal.astype(np.int64), 2
    weights = group_weights(labels, data.origin, bool(st["balance"]), st["synthetic_share"])
    r = model_recipe(st, model)
    t0 = time.perf_counter()
    net = train_fn(model, data.images, labels, k, steps=int(r["steps"]), batch_size=int(r["batch_size"]),
                   lr=float(r["lr"]), seed=int(seed), device=device, image_size=st["image_size"],
                   weight_decay=float(r["weight_decay"]), schedule=str(r["schedule"]),
                   augment_frames=bool(r["augment"]), sample_weights=weights, warmup=float(r["warmup"]),
                   flips=bool(r["flips"]), label_smoothing=float(r["label_smoothing"]), scale=float(r["scale"]),
                   model_kwargs=r["model_kwargs"], on_step=on_step)
    seconds = time.perf_counter() - t0
    n_synth = sum(o == "synthetic" for o in data.origin)
    normal_test, abnormal_test = tests["real_test"], tests["abnormal_test"]
    anomaly_test = concat([normal_test, abnormal_test])
    probs = predict_fn(net, anomaly_test.images)
    facts = {"n_train": len(data), "n_train_real": len(data) - n_synth, "n_train_synthetic": n_synth,
             "steps": int(r["steps"]), "train_seconds": round(seconds, 2)}

    def row(task_: str, score: str) -> dict:
        return {"model": model, "seed": int(seed), "task": task_, "condition": condition, "score": score, **facts}

    rows = []
    if task == "plane":
        known = normal_test.plane >= 0
        rows.append({**row("plane", "argmax"), "n_test": int(known.sum()),
                     **_plane_metrics(probs[:len(normal_test)][known], normal_test.plane[known])})
        if condition == REAL:  # the baseline anomaly detector: 1 - max softmax probability
            rows.append({**row("anomaly", "msp"), "n_test": len(anomaly_test),
                         **_anomaly_metrics(1.0 - probs.max(1), anomaly_test)})
    else:
        p = probs[:, 1]
        y = anomaly_test.abnormal.astype(int)
        pred = (p >= 0.5).astype(int)
        rows.append({**row("anomaly", "p_abnormal"), "n_test": len(anomaly_test), "accuracy": accuracy(y, pred),
                     "balanced_accuracy": balanced_accuracy(y, pred), **_anomaly_metrics(p, anomaly_test)})
    del net
    return rows


def _order(rows: list[dict], models: Sequence[str]) -> list[dict]:
    """Rows of the study's models and seeds, in model, seed, task, condition order (others after)."""
    tasks = [rc for _, rcs in UNITS for rc in rcs]

    def rank(r):
        m, s, t, c = _key(r)
        return (models.index(m) if m in models else len(models), m, s, tasks.index((t, c)) if (t, c) in tasks else 9)

    return sorted(rows, key=rank)


def run_study(cfg, sets: dict[str, FrameSet], out: Path, progress: bool = True, *,
              train_fn: TrainFn | None = None, predict_fn=None, wait: bool = False) -> dict:
    """Run (or resume) the study of ``cfg.downstream`` on ``sets`` into ``out``.

    Returns ``{"rows", "summary", "table", "out", "trained", "skipped"}``: the rows of the
    configured models and seeds (from ``rows.csv``, values as numbers where they are), the summary
    rows, the markdown of ``table.md``, and how many trainings were run / found done.
    ``train_fn`` / ``predict_fn`` replace :func:`~diffice.downstream.train.train_classifier` /
    :func:`~diffice.downstream.train.predict` (tests count calls with them). One study at a time
    writes into ``out`` (:func:`diffice.runlock.run_lock`; ``wait``: wait for another one to finish).
    """
    from diffice.runlock import run_lock

    with run_lock(out, "downstream study", wait=wait):
        return _run_study(cfg, sets, Path(out), progress, train_fn, predict_fn)


def _run_study(cfg, sets: dict[str, FrameSet], out: Path, progress: bool, train_fn: TrainFn | None, predict_fn) -> dict:
    from diffice.downstream.train import predict, resolve_device, train_classifier
    from diffice.progress import Bar
    from diffice.runfolder import claim_run_folder, write_rows_csv

    out = Path(out)
    st = study_settings(cfg)
    accel = str(cfg.trainer.accelerator) if "trainer" in cfg else "auto"
    device = resolve_device(accel)
    sets = _check_sets(sets, st["image_size"])
    settings = {**{k: st[k] for k in SETTING_KEYS},
                "data": {name: {"frames": len(sets[name]), "digest": sets[name].digest()} for name in (*SETS, *OPTIONAL) if name in sets}}
    claim_run_folder(out, RUN_KIND, settings)
    train_fn = train_fn or train_classifier
    predict_fn = predict_fn or predict

    rows = read_rows(out)
    done = {_key(r) for r in rows}
    units = [u for u in UNITS if u[0][1] != UPPER or RENDERED in sets]
    todo = []
    for seed in st["seeds"]:
        for model in st["models"]:
            for (task, condition), gives in units:
                if all((model, seed, t, c) in done for t, c in gives):
                    continue
                todo.append((seed, model, task, condition, gives))
    n_units = len(st["seeds"]) * len(st["models"]) * len(units)
    bar = Bar("downstream rows", sum(len(u[4]) for u in todo), enabled=progress)
    tests = {k: sets[k] for k in ("real_test", "abnormal_test")}
    try:
        last_seed, train_sets = None, None
        for seed, model, task, condition, gives in todo:
            if seed != last_seed:
                train_sets, last_seed = seed_sets(sets, st, seed), seed
            label = f"{model} seed {seed} {task}/{condition}"
            bar.note(label)

            steps = int(model_recipe(st, model)["steps"])

            def on_step(k: int, label: str = label, steps: int = steps) -> None:
                if k == steps or k % max(1, steps // 50) == 0:
                    bar.note(f"{label} step {k}/{steps}")

            new = _train_unit(task, condition, model, seed, st, train_sets, tests, device, train_fn, predict_fn, on_step)
            new = [r for r in new if _key(r) not in done]  # a half-done unit (older rows.csv) adds what is missing
            rows = rows + new
            done |= {_key(r) for r in new}
            write_rows_csv(out / ROWS, rows)
            bar.advance(len(gives))
    finally:
        bar.close()

    mine = [r for r in rows if r["model"] in st["models"] and int(r["seed"]) in st["seeds"]]
    mine = [{k: (v if k in ("model", "task", "condition", "score") else _num(v)) for k, v in r.items()}
            for r in _order(mine, st["models"])]
    for r in mine:
        r["seed"] = int(r["seed"])
    summary = summarize(mine, st["models"])
    write_rows_csv(out / SUMMARY, summary)
    table = write_table(out, mine, models=st["models"], settings=st, sets=sets)
    return {"rows": mine, "summary": summary, "table": table, "out": str(out),
            "trained": len(todo), "skipped": n_units - len(todo)}
