"""Which DDPM recipe buys the most quality per CPU-hour on real frames (hc18-faults at 128x160)?

Each variant is a set of ``key=value`` overrides of ``configs/preset/hc18.yaml``. For each, in one run on
one machine, 1 torch thread:
1. speed: seconds per training step of the real command (``diffice train-ddpm``, start-up included, over
   ``--time-steps`` steps: an upper bound, alike for every variant) and training images (whole frames or
   patches) per CPU-second;
2. quality at equal CPU time: the variant is trained from scratch (``paths.runs`` = OUT/NAME) for
   ``--budget`` CPU-minutes (max_steps = budget / seconds per step), then ``diffice ddpm-check`` on the
   first ``--count`` clean test frames at the preset's tau with the official SonoNet-16: head Dice and the
   brain-plane call rate of the reconstructions against the frames' own (the issue's targets: Dice ≥ 0.95,
   rate within 0.05).
A variant whose run folder already has a finished checkpoint is not trained again (resumable; kill and
rerun). Results: OUT/variants.md (a row each, written as each variant finishes).

    OMP_NUM_THREADS=1 .venv/bin/python bench/ddpm_variants.py --out runs/ddpm-variants --budget 45 --count 64
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIFFICE = [sys.executable, "-m", "diffice.cli"]
PRESET = str(ROOT / "configs/preset/hc18.yaml")
COMMON = ["trainer.progress_bar=false", "wandb.mode=disabled", "ddpm.sample_every_n_steps=0",
          "trainer.val_every_n_steps=100000", "trainer.checkpoint_every_n_steps=50"]
# name -> overrides; every variant runs bf16 autocast (the preset's precision)
VARIANTS = {
    "full frames, t < 250 (the pack's recipe)": [],
    "full frames, t < 120": ["ddpm.train_max_t=0.12"],
    "patches 64x80 + coordinates, t < 120": ["ddpm.train_max_t=0.12", "ddpm.patch_size=[64,80]", "unet.coord_channels=true"],
    "patches 64x80, batch 32, wider (48), t < 120": ["ddpm.train_max_t=0.12", "ddpm.patch_size=[64,80]", "unet.coord_channels=true",
                                                     "data.batch_size=32", "unet.model_channels=48", "unet.num_head_channels=48"],
}


def run(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    subprocess.run([*DIFFICE, *args], check=True, env=env, cwd=ROOT)


def seconds_per_step(name: str, overrides: list[str], out: Path, steps: int) -> float:
    folder = out / "timing" / name.split(",")[0].replace(" ", "_")
    start = time.perf_counter()
    run(["train-ddpm", PRESET, f"paths.runs={folder}", f"ddpm.max_steps={steps}", *COMMON, *overrides])
    return (time.perf_counter() - start) / steps  # includes start-up: an upper bound, the same for every variant


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/ddpm-variants")
    ap.add_argument("--budget", type=float, default=45.0, help="CPU-minutes of training per variant")
    ap.add_argument("--count", type=int, default=64, help="clean test frames for ddpm-check")
    ap.add_argument("--time-steps", type=int, default=20)
    ap.add_argument("--only", nargs="*", default=None, help="variant names (substrings) to run")
    args = ap.parse_args()
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = ["| variant | s / step | images / CPU-s | steps in budget | head Dice [95 %] | SonoNet brain: recon vs frames (n) |",
            "|---|---|---|---|---|---|"]
    for name, ov in VARIANTS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        slug = "".join(c if c.isalnum() else "_" for c in name)[:40]
        spec = out / slug / "speed.json"
        if spec.is_file():
            sps = json.loads(spec.read_text())["seconds_per_step"]
        else:
            sps = seconds_per_step(slug, ov, out, args.time_steps)
            spec.parent.mkdir(parents=True, exist_ok=True)
            spec.write_text(json.dumps({"seconds_per_step": sps}))
        batch = next((int(o.split("=")[1]) for o in ov if o.startswith("data.batch_size=")), 16)
        steps = max(1, int(args.budget * 60 / sps))
        runs = out / slug / "runs"
        run(["train-ddpm", PRESET, f"paths.runs={runs}", f"ddpm.max_steps={steps}", *COMMON, *ov])
        check = out / slug / "check"
        run(["ddpm-check", str(runs / "ddpm" / "last.ckpt"), PRESET, "--segmenter", str(ROOT / "models/hc18/guide.ckpt"),
             "--count", str(args.count), "--out", str(check)])
        res = json.loads((check / "ddpm_check.json").read_text())
        d = res["dice_intervals"]["head"]
        s = res.get("sononet") or {}
        son = (f"{s['reconstruction']['k']} vs {s['input']['k']} of {s['input']['n']}" if s else "n/a")
        rows.append(f"| {name} | {sps:.2f} | {batch / sps:.1f} | {steps} | {d['value']:.3f} [{d['low']:.3f}, {d['high']:.3f}] | {son} |")
        (out / "variants.md").write_text("\n".join(rows) + "\n")
        print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
