"""``diffice train-ddpm`` and ``diffice sample``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from diffice.errors import UserError


def cmd_train_ddpm(argv: Sequence[str]) -> int:
    from diffice.config import config_from_args
    from diffice.modules.ddpm import train_ddpm

    p = argparse.ArgumentParser(
        prog="diffice train-ddpm",
        description="Train the unconditional DDPM (phantom data unless a data config says otherwise). "
        "A run folder holding last.ckpt is resumed.",
    )
    p.add_argument("args", nargs="*", help="config files (*.yaml) and key=value overrides, in order")
    ns = p.parse_intermixed_args(argv)
    cfg = config_from_args(ns.args)
    last = train_ddpm(cfg)
    print(f"DDPM checkpoint: {last}")
    return 0


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available (use --device cpu)")
    return torch.device(name)


def cmd_sample(argv: Sequence[str]) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from diffice.config import config_from_args
    from diffice.io import atomic_write_text, make_grid, save_png, to_uint8
    from diffice.modules.ddpm import load_ddpm

    p = argparse.ArgumentParser(
        prog="diffice sample",
        description="Sample frames from a trained DDPM (its EMA weights) into DIR/000000.png ... and DIR/grid.png. "
        "Frames already in DIR are kept, so an interrupted run resumes.",
    )
    p.add_argument("ckpt", help="DDPM checkpoint (e.g. runs/ddpm/last.ckpt)")
    p.add_argument("args", nargs="*", help="optional config files / key=value overrides; their data.image_size must match the checkpoint")
    p.add_argument("--count", type=int, default=16, help="number of frames (default 16)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", default=None, help="respacing: N, ddimN or a,b,c (default: the checkpoint's diffusion.timestep_respacing)")
    p.add_argument("--seed", type=int, default=0, help="frame i is drawn from a generator seeded by (seed, i)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per batch")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ns = p.parse_intermixed_args(argv)
    if ns.count < 1 or ns.batch_size < 1:
        raise UserError("--count and --batch-size must be at least 1")

    cfg = config_from_args(ns.args) if ns.args else None
    module = load_ddpm(ns.ckpt, cfg, map_location=_device(ns.device))
    if float(module.cfg.ddpm.train_max_t) < 1.0:
        print(f"warning: {ns.ckpt} was trained only on t < {module.cfg.ddpm.train_max_t:g} T "
              "(ddpm.train_max_t); frames sampled from pure noise will not look like ultrasound")
    steps = str(module.cfg.diffusion.timestep_respacing if ns.steps is None else ns.steps)
    diffusion = module.sampler(steps)  # UserError on a bad respacing string

    out = Path(ns.out)
    settings = {"ckpt": str(Path(ns.ckpt).resolve()), "trained_steps": module.trained_steps, "steps": steps, "seed": ns.seed}
    meta = out / "sample.json"
    if meta.exists():
        try:
            old = json.loads(meta.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{meta}: unreadable ({err.msg}); delete it or choose another --out") from err
        if {k: old.get(k) for k in settings} != settings:
            raise UserError(f"{out}: holds frames sampled with other settings ({old}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta, json.dumps(settings, indent=1))

    todo = [i for i in range(ns.count) if not (out / f"{i:06d}.png").exists()]
    columns = (TextColumn("[bold]sampling"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"), TimeRemainingColumn())
    with Progress(*columns) as bar:
        batches = -(-len(todo) // ns.batch_size)
        task = bar.add_task("sample", total=batches * diffusion.num_timesteps)  # reverse steps of all batches
        for start in range(0, len(todo), ns.batch_size):
            chunk = todo[start : start + ns.batch_size]
            frames = module.sample(chunk, respacing=steps, seed=ns.seed, callback=lambda k: bar.advance(task))
            for i, f in zip(chunk, frames):
                save_png(out / f"{i:06d}.png", to_uint8(f))
    import numpy as np
    from PIL import Image

    frames = [np.asarray(Image.open(out / f"{i:06d}.png")) for i in range(ns.count)]
    save_png(out / "grid.png", make_grid(frames))
    print(f"{ns.count} frames in {out} (grid: {out / 'grid.png'}; {diffusion.num_timesteps} steps, seed {ns.seed})")
    return 0
