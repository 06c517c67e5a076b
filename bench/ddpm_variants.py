"""Which DDPM recipe buys the most quality per CPU-hour on real frames (hc18-faults at 128x160)?

Each variant is a set of ``key=value`` overrides of ``configs/preset/hc18.yaml``. For each, in one run on
one machine, 1 torch thread:
1. quality at equal CPU time: the variant is trained from scratch (``paths.runs`` = OUT/NAME) for ``--budget``
   minutes of training wall time on one thread (``trainer.max_time``, Lightning's Timer: start-up excluded,
   and kept across a kill and resume), then ``diffice ddpm-check`` on the first ``--count`` clean test frames
   at the preset's tau with the official SonoNet-16: head Dice and the brain-plane call rate of the
   reconstructions against the frames' own (the issue's targets: Dice >= 0.95, rate within 0.05);
2. speed, from the same training: optimizer steps done in the budget, seconds per step, and training
   images (whole frames or patches) per CPU-second.
A variant whose folder holds ``trained.json`` is not trained again, one with ``check/ddpm_check.json`` not
checked again (resumable: kill and rerun). Results: OUT/variants.md (a row each, written as each finishes).
Another CPU-heavy job on the machine slows every variant alike only if it runs throughout: say so beside
the numbers.

    OMP_NUM_THREADS=1 .venv/bin/python bench/ddpm_variants.py --out runs/ddpm-variants --budget 20 --count 64
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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


def steps_of(ckpt: Path) -> int:
    import torch

    return int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/ddpm-variants")
    ap.add_argument("--budget", type=float, default=20.0, help="minutes of training (one thread) per variant")
    ap.add_argument("--count", type=int, default=64, help="clean test frames for ddpm-check")
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
        runs = out / slug / "runs"
        done = out / slug / "trained.json"
        if not done.is_file():
            minutes = int(round(args.budget))
            run(["train-ddpm", PRESET, f"paths.runs={runs}", "ddpm.max_steps=10000000",
                 f"trainer.max_time=00:{minutes // 60:02d}:{minutes % 60:02d}:00", *COMMON, *ov])
            done.write_text(json.dumps({"steps": steps_of(runs / "ddpm" / "last.ckpt"), "budget_minutes": minutes}))
        steps = json.loads(done.read_text())["steps"]
        sps = args.budget * 60 / steps
        batch = next((int(o.split("=")[1]) for o in ov if o.startswith("data.batch_size=")), 16)
        check = out / slug / "check"
        if not (check / "ddpm_check.json").is_file():
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
