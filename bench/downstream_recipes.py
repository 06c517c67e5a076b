"""Probe one downstream recipe: train one timm model on the real training frames, score the real test frames.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/downstream_recipes.py resnet18 --real 200 \\
        --steps 300 --lr 2e-3 --warmup 0.3 --flips [--scale 2] [--wd 0.05] [--smooth 0.1] \\
        [--kw '{"drop_rate": 0}'] [--config experiments/fetalflex_downstream.yaml]

The frames are the demo preset's phantom (``configs/preset/demo.yaml``: 64x80, 1000 frames split by
patient, the ~700 training and 200 test frames with planes), made by the study's own
:func:`diffice.experiments.downstream.real_sets` and cached in ``runs/downstream_recipes/frames.npz``.
``--real N`` draws N training frames stratified by plane (the study's draw for ``--seed``; ``all``:
every one). Training and prediction are the study's :func:`~diffice.downstream.train.train_classifier`
and :func:`~diffice.downstream.train.predict` with class-balanced draws, so the numbers are what the
study gets. With ``--config`` the recipe is the one the study would use for the model (the global
``downstream.*`` keys merged with ``downstream.recipes[model]``); flags given explicitly override it.

Prints one line (model, recipe, real frames, test plane accuracy, balanced accuracy, test frames,
training seconds, torch threads) and appends it to ``runs/downstream_recipes/results.tsv``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "runs" / "downstream_recipes"


def frames() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (images, planes), 'test': (images, planes)} of the demo preset's phantom (cached)."""
    path = CACHE / "frames.npz"
    if not path.exists():
        from diffice.config import load_config
        from diffice.experiments.downstream import real_sets

        cfg = load_config([ROOT / "configs" / "preset" / "demo.yaml"])
        sets = real_sets(cfg)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, train_x=sets["real_train"].images, train_y=sets["real_train"].plane,
                            test_x=sets["real_test"].images, test_y=sets["real_test"].plane)
    z = np.load(path)
    return {"train": (z["train_x"], z["train_y"]), "test": (z["test_x"], z["test_y"])}


def draw(planes: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Indices of the study's plane-stratified draw of ``limit`` frames for ``seed`` (all if None)."""
    from diffice.downstream.frames import FrameSet
    from diffice.downstream.study import seed_sets

    n = len(planes)
    fs = FrameSet(np.zeros((n, 1, 1), np.uint8), planes, [""] * n, ["real"] * n, [str(i) for i in range(n)])
    empty = FrameSet(np.zeros((1, 1, 1), np.uint8), np.zeros(1, np.int64), [""], ["synthetic"], ["s"])
    st = {"real_train_limit": limit, "synth_normal_count": None, "synth_abnormal_count": None}
    sets = seed_sets({"real_train": fs, "synth_normal": empty, "synth_abnormal": empty}, st, seed)
    return np.array([int(i) for i in sets["real_train"].ids])


def recipe_from_config(experiment: str, preset: str, model: str) -> dict:
    """The study's recipe for ``model``: the preset, the experiment file and its preset block, merged."""
    from diffice.config import load_config
    from diffice.downstream.study import model_recipe, study_settings
    from diffice.experiments.spec import preset_file, read_experiment

    base, _, options = read_experiment(Path(experiment))
    block = (options.get("presets") or {}).get(preset) or {}
    return model_recipe(study_settings(load_config([preset_file(preset), base, block])), model)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--real", default="200", help="training frames (plane-stratified) or 'all'")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--wd", type=float)
    ap.add_argument("--warmup", type=float)
    ap.add_argument("--flips", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--scale", type=float)
    ap.add_argument("--smooth", type=float)
    ap.add_argument("--kw", type=json.loads, help="timm.create_model keyword arguments (JSON)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", help="an experiment file (kind: downstream): start from the study's recipe")
    ap.add_argument("--preset", default="demo", help="with --config: the preset (and its block of the file)")
    ap.add_argument("--note", default="")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from diffice.downstream.metrics import accuracy, balanced_accuracy
    from diffice.downstream.train import predict, train_classifier

    r = {"steps": 300, "batch_size": 32, "lr": 2e-3, "weight_decay": 0.05, "warmup": 0.05, "flips": False,
         "scale": 1.0, "label_smoothing": 0.0, "model_kwargs": {}}
    if a.config:
        got = recipe_from_config(a.config, a.preset, a.model)
        r.update({k: got[k] for k in r})
    given = {"steps": a.steps, "batch_size": a.batch, "lr": a.lr, "weight_decay": a.wd, "warmup": a.warmup,
             "flips": a.flips, "scale": a.scale, "label_smoothing": a.smooth, "model_kwargs": a.kw}
    r.update({k: v for k, v in given.items() if v is not None})
    data = frames()
    x, y = data["train"]
    limit = None if a.real == "all" else int(a.real)
    idx = draw(y, limit, a.seed)
    tx, ty = data["test"]
    t0 = time.perf_counter()
    net = train_classifier(a.model, x[idx], y[idx], 3, seed=a.seed, device="cpu", balanced=True, **r)
    seconds = time.perf_counter() - t0
    pred = predict(net, tx).argmax(1)
    acc, bal = accuracy(ty, pred), balanced_accuracy(ty, pred)
    short = {"steps": "st", "batch_size": "bs", "lr": "lr", "weight_decay": "wd", "warmup": "wu", "flips": "flip",
             "scale": "x", "label_smoothing": "ls", "model_kwargs": "kw"}
    recipe = " ".join(f"{short[k]}={json.dumps(v, separators=(',', ':')) if k == 'model_kwargs' else v}"
                      for k, v in r.items())
    line = "\t".join([a.model, recipe, str(len(idx)), f"{acc:.3f}", f"{bal:.3f}", str(len(ty)), f"{seconds:.0f}",
                      str(torch.get_num_threads()), f"seed={a.seed}", a.note])
    print(line, flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "results.tsv", "a") as f:
        f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
