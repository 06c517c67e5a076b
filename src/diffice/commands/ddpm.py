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
    import re

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", str(name)):
        raise UserError(f"--device {name}: not a device (auto, cpu, cuda or cuda:N)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available (use --device cpu)")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 ..)")
    return torch.device(name)


def cmd_sample(argv: Sequence[str]) -> int:
    from diffice.config import config_from_args
    from diffice.io import atomic_write_text, make_grid, save_png, to_uint8
    from diffice.modules.ddpm import load_ddpm
    from diffice.progress import Bar

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
    batches = -(-len(todo) // ns.batch_size)
    with Bar("sampling (reverse steps)", batches * diffusion.num_timesteps) as bar:  # reverse steps of all batches
        for start in range(0, len(todo), ns.batch_size):
            chunk = todo[start : start + ns.batch_size]
            frames = module.sample(chunk, respacing=steps, seed=ns.seed, callback=lambda k: bar.advance())
            for i, f in zip(chunk, frames):
                save_png(out / f"{i:06d}.png", to_uint8(f))
    import numpy as np
    from PIL import Image

    frames = [np.asarray(Image.open(out / f"{i:06d}.png")) for i in range(ns.count)]
    save_png(out / "grid.png", make_grid(frames))
    print(f"{ns.count} frames in {out} (grid: {out / 'grid.png'}; {diffusion.num_timesteps} steps, seed {ns.seed})")
    return 0


def cmd_ddpm_check(argv: Sequence[str]) -> int:
    from diffice.config import config_from_args
    from diffice.counterfactual.check import SCORED
    from diffice.counterfactual.settings import ENCODINGS, NOISE_CONVENTIONS
    from diffice.io import atomic_write_text, make_grid, save_png, to_uint8
    from diffice.modules.ddpm import check_sp_frames, load_ddpm, segment_fn

    p = argparse.ArgumentParser(
        prog="diffice ddpm-check",
        description="Noise standard-plane test frames to the counterfactuals' step cf.tau, denoise them without guidance, "
        "and report per structure the segmenter's Dice between input and reconstruction, and the PSNR. "
        "A DDPM that loses the anatomy here cannot give counterfactuals (target: Dice >= 0.8 for every structure).",
    )
    p.add_argument("ckpt", help="DDPM checkpoint")
    p.add_argument("args", nargs="*", help="config files / key=value overrides (default: the checkpoint's own config)")
    p.add_argument("--segmenter", default=None,
                   help="segmenter or classifier (guide) checkpoint whose segmenter scores the anatomy "
                        "(default: cf.guide_ckpt if it exists, else guide.segmenter_ckpt)")
    p.add_argument("--count", type=int, default=32, help="standard-plane test frames (default 32)")
    p.add_argument("--split", default="test", help="data split (default test)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default=None, help="folder for ddpm_check.json and a grid of inputs over reconstructions")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ns = p.parse_intermixed_args(argv)
    if ns.count < 1 or ns.batch_size < 1:
        raise UserError("--count and --batch-size must be at least 1")
    device = _device(ns.device)
    module = load_ddpm(ns.ckpt, map_location=device)
    cfg = config_from_args(ns.args) if ns.args else module.cfg
    if list(cfg.data.image_size) != list(module.cfg.data.image_size):
        raise UserError(f"{ns.ckpt}: trained at image size {list(module.cfg.data.image_size)} but data.image_size is "
                        f"{list(cfg.data.image_size)}")
    convention = str(cfg.cf.noise_convention)
    if convention not in NOISE_CONVENTIONS:
        raise UserError(f"cf.noise_convention: '{convention}' is not one of {', '.join(NOISE_CONVENTIONS)}")
    if str(cfg.cf.encode) not in ENCODINGS:
        raise UserError(f"cf.encode: '{cfg.cf.encode}' is not one of {', '.join(ENCODINGS)}")
    diffusion = module.sampler(str(cfg.cf.respacing))
    tau = int(cfg.cf.tau)
    if not 1 <= tau <= diffusion.num_timesteps:
        raise UserError(f"cf.tau: {tau} must lie in 1..{diffusion.num_timesteps}")
    if int(diffusion.timestep_map[tau - 1]) >= module.max_train_t():
        print(f"warning: cf.tau={tau} lies beyond the noise levels {ns.ckpt} was trained on (ddpm.train_max_t)")

    seg_path = ns.segmenter
    if seg_path is None:
        seg_path = next((str(q) for q in (cfg.cf.guide_ckpt, cfg.guide.segmenter_ckpt) if q and Path(q).is_file()), None)
    segment, seg_classes = (None, list(cfg.data.classes)) if seg_path is None else segment_fn(seg_path, device)
    if segment is None:
        print("warning: no segmenter checkpoint found (--segmenter); reporting PSNR only")

    res = check_sp_frames(module, cfg, segment, seg_classes, split=ns.split, count=ns.count,
                          batch_size=ns.batch_size, device=device, keep=8)
    examples = res.pop("examples")
    res.update(ckpt=str(ns.ckpt), trained_steps=module.trained_steps, respacing=str(cfg.cf.respacing),
               segmenter=seg_path, split=ns.split)
    how = "by DDIM inversion" if cfg.cf.encode == "ddim" else f"by noise, {convention} convention"
    print(f"{ns.ckpt} ({module.trained_steps} steps): {res['frames']} SP {ns.split} frames taken to tau={tau} of "
          f"{cfg.cf.respacing} ({how}) and denoised without guidance")
    print(f"  PSNR {res['psnr']:.2f} dB")
    low = []
    for name in SCORED:
        if name in res["dice"]:
            v = res["dice"][name]
            iv = (res.get("dice_intervals") or {}).get(name) or {}
            ci = f" [{iv['low']:.3f}, {iv['high']:.3f}] (95 %, bootstrap over frames)" if iv.get("low") is not None else ""
            print(f"  Dice {name:<5} {'n/a' if v is None else f'{v:.3f}'}{ci}")
            if v is not None and v < 0.8:
                low.append(name)
    if low:
        print(f"  below the 0.8 target: {', '.join(low)} (train the DDPM longer or lower cf.tau)")
    if res.get("sononet"):
        from diffice.metrics.stats import fmt_p, fmt_rate

        s = res["sononet"]
        print(f"  SonoNet-16 brain plane: inputs {fmt_rate(s['input'])}, reconstructions {fmt_rate(s['reconstruction'])}; "
              f"difference {s['difference']:+.3f}, McNemar p = {fmt_p(s['mcnemar_p'])}")
    if ns.out:
        out = Path(ns.out)
        out.mkdir(parents=True, exist_ok=True)
        tiles = [to_uint8(a) for a, _ in examples] + [to_uint8(b) for _, b in examples]
        save_png(out / "ddpm_check.png", make_grid(tiles, ncol=max(1, len(examples))))
        atomic_write_text(out / "ddpm_check.json", json.dumps(res, indent=1))
        print(f"  written: {out / 'ddpm_check.json'}, {out / 'ddpm_check.png'} (top: inputs, bottom: reconstructions)")
    return 0
