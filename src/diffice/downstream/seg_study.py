"""The head-measurement study (issue 36): do synthetic image–mask pairs help a head segmenter
trained on few real labelled heads measure the head circumference (HC)?

Inputs of :func:`run_seg_study`:

* ``test`` (:class:`HeadTest`): real frames of unseen fetuses with their annotation masks, pixel
  spacing and annotated HC (in the experiment: every clean test frame of hc18-faults);
* ``train``: ``{(N, seed): FrameSet}`` — the real labelled training frames (with masks) of each draw
  (in the experiment: ``data.labelled=N``, ``data.labelled_seed=seed``; N is '50', '100', ... or 'all');
* ``synthetic``: ``{(N, seed): FrameSet}`` — the synthetic pairs of that draw (:func:`read_synthetic`:
  the samples of a synthesis run folder, each with its layout as its mask), made by a generator
  that saw only those N labels: the generator sees no label the segmenter does not see.

Per N and seed two trainings (:func:`~diffice.downstream.seg_train.train_segmenter`), of the same
seed (the same initial weights), steps, batch size and augmentation (``data.augment``'s transforms):

* ``real`` (augmentation only): the N real frames;
* ``real+synthetic``: the N real frames and the synthetic pairs (at most ``synthetic_limit``, a draw
  of the seed), ``synthetic_share`` of the draws synthetic.

Each trained segmenter is scored on every test frame (:func:`~diffice.downstream.seg_train.head_measures`).
Output folder ``out``: ``run.json`` (the stamp: the ``seg_downstream`` keys that change a row, the
segmenter, the classes, the frame size and a digest of the test frames; a folder of other settings
is refused), ``rows.csv`` (one row per N, seed, arm and test frame, with a digest of the training
frames; rewritten atomically after each training, so a killed study resumes: no lost or duplicated
row; a row of other training frames than now is refused), ``summary.csv`` and ``table.md``
(:mod:`~diffice.downstream.seg_table`). N values and seeds may be added to a finished study.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffice.downstream.frames import FrameSet, concat, load_synthesis_run
from diffice.downstream.rows import REAL, ROWS, SYNTH, number, read_rows
from diffice.errors import UserError
from diffice.runfolder.stamp import RunKind

ARMS = (REAL, SYNTH)  # augmentation only; augmentation + synthetic pairs
ALL = "all"
# the keys of seg_downstream.* that change a row (labelled and seeds only choose rows; synthetic is a digest per row)
SETTING_KEYS = ("synthetic_limit", "synthetic_share", "steps", "batch_size", "lr", "augment")
SEGMENTER_KEYS = ("arch", "encoder", "encoder_weights", "decoder_channels")
RUN_KIND = RunKind("segmentation_downstream", "head-measurement study", items=(ROWS,),
                   fix="set paths.runs to a new folder or delete the row's folder")
TEXT = ("labelled", "arm", "frame", "train_digest")
WHOLE = ("seed", "head_found", "n_train_real", "n_train_synthetic", "steps")
NUMBERS = ("hc_abs_mm", "hc_annotated_mm")


@dataclass
class HeadTest:
    """Test frames (``frames.masks``: the annotation) with ``pixel_mm`` (N, 2) (row, col) in mm at
    the frames' size and the annotated HC ``hc_mm`` (N,) in mm."""

    frames: FrameSet
    pixel_mm: np.ndarray
    hc_mm: np.ndarray

    def __post_init__(self):
        n = len(self.frames)
        self.pixel_mm = np.asarray(self.pixel_mm, np.float64).reshape(n, 2)
        self.hc_mm = np.asarray(self.hc_mm, np.float64).reshape(n)
        if self.frames.masks is None:
            raise ValueError("HeadTest: the test frames need their masks")

    def digest(self) -> str:
        h = hashlib.sha1(self.frames.digest().encode())
        h.update(self.pixel_mm.astype("<f8").tobytes())
        h.update(self.hc_mm.astype("<f8").tobytes())
        return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- settings


def labels_of(values) -> list[str]:
    """``seg_downstream.labelled`` as row labels: whole numbers >= 1 as text, and 'all'."""
    out = []
    for v in values:
        text = str(v).strip().lower()
        if text in (ALL, "none", "null"):
            text = ALL
        elif isinstance(v, bool) or not text.isdigit() or int(text) < 1:
            raise UserError(f"seg_downstream.labelled: {v!r} is not a number of frames (>= 1) or 'all'")
        else:
            text = str(int(text))
        out.append(text)
    if not out or len(set(out)) != len(out):
        raise UserError(f"seg_downstream.labelled: {list(values)} must list each N once (and at least one)")
    return out


def study_settings(cfg) -> dict:
    """The study's keys as plain values: ``labels``, ``seeds``, the :data:`SETTING_KEYS`, and the stamp's
    ``segmenter``, ``classes`` and ``image_size``."""
    from omegaconf import OmegaConf

    sd = OmegaConf.to_container(cfg.seg_downstream, resolve=True)
    seeds = [int(s) for s in sd["seeds"]]
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"seg_downstream.seeds: {seeds} must list each seed once (and at least one)")
    seg = OmegaConf.to_container(cfg.segmenter, resolve=True)
    return {"labels": labels_of(sd["labelled"]), "seeds": seeds, "synthetic": None if sd["synthetic"] is None else str(sd["synthetic"]),
            **{k: sd[k] for k in SETTING_KEYS}, "segmenter": {k: seg.get(k) for k in SEGMENTER_KEYS},
            "classes": [str(c) for c in cfg.data.classes], "image_size": [int(v) for v in cfg.data.image_size]}


# ----------------------------------------------------------------------------- synthetic pairs


def synthetic_folder(template: str, label: str, seed: int) -> Path:
    """The synthesis run folder of (N, seed): ``{n}`` and ``{seed}`` of ``seg_downstream.synthetic`` filled in."""
    return Path(str(template).replace("{n}", str(label)).replace("{seed}", str(int(seed))))


def per_draw(template: str) -> bool:
    """Whether ``seg_downstream.synthetic`` names one folder per (N, seed) (else one for all)."""
    return "{n}" in str(template) or "{seed}" in str(template)


def _check_labels(folder: Path, label: str, seed: int) -> None:
    """Refuse a synthesis run folder whose stamp says its layouts came from other labels than (N, seed)'s."""
    from diffice.runfolder import read_stamp

    stamp = read_stamp(folder)
    data = (stamp or {}).get("settings", {}).get("data")
    if not isinstance(data, dict) or "labelled" not in data:
        return  # no stamp that says (a folder written by hand or by an older diffice): the user's word
    want = None if label == ALL else int(label)
    there, there_seed = data.get("labelled"), data.get("labelled_seed", 0)
    if there != want or (want is not None and int(there_seed) != int(seed)):
        raise UserError(f"seg_downstream.synthetic: {folder} was made with data.labelled={there}, "
                        f"data.labelled_seed={there_seed}, but its segmenters see N={label} labels of seed {seed}; "
                        f"the generator may see no label the segmenter does not (docs/synthesis.md)")


def read_synthetic(template: str, labels: list[str], seeds: list[int], size, num_classes: int) -> dict:
    """``{(N, seed): FrameSet}`` of synthetic pairs (samples with their layouts as masks, at ``size``)
    from the folders ``seg_downstream.synthetic`` names; every folder is checked before any is read."""
    folders = {(lab, s): synthetic_folder(template, lab, s) for lab in labels for s in seeds}
    for (lab, s), folder in folders.items():
        if not (folder / "layouts").is_dir():
            what = "synthesis run folder not found" if not folder.is_dir() else "has no layouts/ (a synthesis run's samples)"
            raise UserError(f"seg_downstream.synthetic: {folder}: {what} (for N={lab}, seed {s}); write it with "
                            f"diffice synthesize --test, or point seg_downstream.synthetic at it")
        if per_draw(template):
            _check_labels(folder, lab, s)
    loaded: dict[Path, FrameSet] = {}
    out = {}
    for key, folder in folders.items():
        if folder not in loaded:
            loaded[folder] = load_synthesis_run(folder, "layouts", size=size, mask_classes=num_classes)
        out[key] = loaded[folder]
    return out


# ----------------------------------------------------------------------------- rows


def row_problem(row: dict, header: list[str]) -> str | None:
    """Why a ``rows.csv`` row is not a finished row of this study, or None."""
    if None in row:
        return "more cells than the header"
    missing = [k for k in (*TEXT, *WHOLE, *NUMBERS, "dice") if k not in header]
    if missing:
        return f"no '{missing[0]}' column"
    if any(row.get(k) is None for k in header):
        return "fewer cells than the header"
    for key in TEXT:
        if not str(row[key]).strip():
            return f"empty '{key}'"
    if row["arm"] not in ARMS:
        return f"arm '{row['arm']}' unknown"
    for key in WHOLE:
        v = number(row[key])
        if not np.isfinite(v) or v != int(v):
            return f"'{key}' is '{row[key]}', not a whole number"
    for key in NUMBERS:
        if not np.isfinite(number(row[key])):
            return f"'{key}' is '{row[key]}', not a number"
    return None


def _known(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None  # an empty cell, not "nan"


def _key(row: dict) -> tuple[str, int, str]:
    return str(row["labelled"]), int(number(row["seed"])), str(row["arm"])


def _training_set(st: dict, real: FrameSet, synth: FrameSet | None, seed: int) -> FrameSet:
    if synth is None:
        return real
    limit = st["synthetic_limit"]
    if limit is not None and int(limit) < len(synth):
        rng = np.random.default_rng([int(seed), 36])
        synth = synth.subset(np.sort(rng.permutation(len(synth))[:int(limit)]))
    return concat([real, synth])


TrainFn = Callable[..., object]


def _train_and_score(cfg, st: dict, data: FrameSet, test: HeadTest, seed: int, device, train_fn: TrainFn, on_step) -> tuple[list[dict], dict]:
    from diffice.downstream.seg_train import head_measures, predict_masks
    from diffice.downstream.study import group_weights

    weights = group_weights(np.zeros(len(data)), data.origin, False, st["synthetic_share"])
    t0 = time.perf_counter()
    net = train_fn(cfg, len(st["classes"]), data.images, data.masks, steps=int(st["steps"]),
                   batch_size=int(st["batch_size"]), lr=float(st["lr"]), seed=int(seed), device=device,
                   augment=bool(st["augment"]), sample_weights=weights, on_step=on_step)
    seconds = time.perf_counter() - t0
    measures = head_measures(predict_masks(net, test.frames.images), test.frames.masks, test.pixel_mm, test.hc_mm)
    n_synth = sum(o == "synthetic" for o in data.origin)
    facts = {"n_train_real": len(data) - n_synth, "n_train_synthetic": n_synth, "steps": int(st["steps"]),
             "train_seconds": round(seconds, 2), "train_digest": data.digest()}
    return measures, facts


def run_seg_study(cfg, test: HeadTest, train: dict, synthetic: dict, out: str | Path, progress: bool = True, *,
                  train_fn: TrainFn | None = None, wait: bool = False) -> dict:
    """Run (or resume) the study of ``cfg.seg_downstream`` into ``out``; returns ``{"rows", "summary",
    "table", "out", "trained", "skipped"}`` (the rows of the configured N and seeds, values as numbers).
    ``train_fn`` replaces :func:`~diffice.downstream.seg_train.train_segmenter` (tests count its calls).
    One study at a time writes into ``out`` (``wait``: wait for another to finish)."""
    from diffice.runlock import run_lock

    with run_lock(out, "head-measurement study", wait=wait):
        return _run(cfg, test, train, synthetic, Path(out), progress, train_fn)


def _run(cfg, test: HeadTest, train: dict, synthetic: dict, out: Path, progress: bool, train_fn: TrainFn | None) -> dict:
    from diffice.downstream.seg_table import write_outputs
    from diffice.downstream.seg_train import train_segmenter
    from diffice.downstream.train import resolve_device
    from diffice.progress import Bar
    from diffice.runfolder import claim_run_folder, write_rows_csv

    st = study_settings(cfg)
    size = st["image_size"]
    device = resolve_device(str(cfg.trainer.accelerator))
    arms = ARMS if st["synthetic"] is not None else (REAL,)  # synthetic: null: augmentation only (its rows stay valid)
    for name, sets in [("train", train)] + ([("synthetic", synthetic)] if SYNTH in arms else []):
        for lab in st["labels"]:
            for s in st["seeds"]:
                fs = sets.get((lab, s))
                if fs is None or len(fs) == 0 or fs.masks is None or fs.size != tuple(size):
                    raise UserError(f"seg_downstream: the {name} frames of N={lab}, seed {s} are missing, empty, "
                                    f"without masks or not {size[0]}x{size[1]}")
    if test.frames.size != tuple(size):
        raise UserError(f"seg_downstream: the test frames are {test.frames.size}, not data.image_size={size}")
    settings = {**{k: st[k] for k in (*SETTING_KEYS, "segmenter", "classes", "image_size")},
                "test": {"frames": len(test.frames), "digest": test.digest()}}
    claim_run_folder(out, RUN_KIND, settings)

    rows = read_rows(out, row_problem)
    test_ids = list(test.frames.ids)
    by_key: dict[tuple, list[dict]] = {}
    for r in rows:
        by_key.setdefault(_key(r), []).append(r)
    done = {k for k, rs in by_key.items() if sorted(r["frame"] for r in rs) == sorted(test_ids)}
    todo = []
    for lab in st["labels"]:
        for seed in st["seeds"]:
            for arm in arms:
                data = _training_set(st, train[(lab, seed)], synthetic[(lab, seed)] if arm == SYNTH else None, seed)
                if (lab, seed, arm) in done:
                    there = by_key[(lab, seed, arm)][0]["train_digest"]
                    if there != data.digest():
                        raise UserError(f"{out / ROWS}: N={lab}, seed {seed}, {arm} was trained on other frames "
                                        f"(digest {there} there, {data.digest()} now; seg_downstream.synthetic or the "
                                        f"data changed); {RUN_KIND.fix}")
                else:
                    todo.append((lab, seed, arm, data))
    bar = Bar("head-measurement trainings", len(todo), enabled=progress)
    steps = int(st["steps"])
    try:
        for lab, seed, arm, data in todo:
            label = f"N={lab} seed {seed} {arm}"
            bar.note(label)

            def on_step(k: int, label: str = label) -> None:
                if k == steps or k % max(1, steps // 50) == 0:
                    bar.note(f"{label} step {k}/{steps}")

            measures, facts = _train_and_score(cfg, st, data, test, seed, device, train_fn or train_segmenter, on_step)
            new = [{"labelled": lab, "seed": seed, "arm": arm, "frame": fid, "dice": _known(m["dice"]), "hc_mm": _known(m["hc_mm"]),
                    "hc_annotated_mm": float(ref), "hc_abs_mm": m["hc_abs_mm"], "head_found": m["head_found"], **facts}
                   for fid, ref, m in zip(test_ids, test.hc_mm, measures)]
            rows = [r for r in rows if _key(r) != (lab, seed, arm)] + new  # a partial training's rows are replaced
            write_rows_csv(out / ROWS, rows)
            bar.advance()
    finally:
        bar.close()
    mine = [r for r in rows if str(r["labelled"]) in st["labels"] and int(number(r["seed"])) in st["seeds"]]
    res = write_outputs(out, mine, st, test)
    return {**res, "out": str(out), "trained": len(todo),
            "skipped": len(st["labels"]) * len(st["seeds"]) * len(arms) - len(todo)}
