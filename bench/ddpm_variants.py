"""Which DDPM recipe buys the most quality per CPU-hour on real frames (hc18-faults at 128x160)?

Each variant is a set of ``key=value`` overrides of ``configs/preset/hc18.yaml``. For each, in one run on
one machine, 1 torch thread:
1. speed in CPU time, so another job on the machine does not change it: two short trainings of the real
   command (``diffice train-ddpm``; the second resumes the first), the training process's own CPU seconds
   from ``getrusage``; their difference over the difference in steps is the CPU-seconds per step
   (start-up cancels), and training images (whole frames or patches) per CPU-second;
2. quality at equal CPU time: the variant is trained from scratch (``paths.runs`` = OUT/NAME) for
   ``--budget`` CPU-minutes (max_steps = budget / CPU-seconds per step), then ``diffice ddpm-check`` on the
   first ``--count`` clean test frames at the preset's tau with the official SonoNet-16: head Dice and the
   brain-plane call rate of the reconstructions against the frames' own (the issue's targets: Dice >= 0.95,
   rate within 0.05).
A variant's speed is measured once (``speed.json``), its training resumes where a kill left it, and a
variant with ``check/ddpm_check.json`` is not checked again (resumable: kill and rerun). Results: OUT/variants.md (a row each, written as each finishes).

    OMP_NUM_THREADS=1 .venv/bin/python bench/ddpm_variants.py --out runs/ddpm-variants --budget 20 --count 64
"""
from __future__ import annotations

import argparse
import json
import os
import resource
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
    "patches 64x80 + coordinates, t < 120": ["ddpm.train_max_t=0.12", "ddpm.patch_size=[64,80]", "unet.coord_channels=true"],
    "full frames, t < 120": ["ddpm.train_max_t=0.12"],
    "patches 64x80, batch 32, wider (48), t < 120": ["ddpm.train_max_t=0.12", "ddpm.patch_size=[64,80]", "unet.coord_channels=true",
                                                     "data.batch_size=32", "unet.model_channels=48", "unet.num_head_channels=48"],
}


def run(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    subprocess.run([*DIFFICE, *args], check=True, env=env, cwd=ROOT)


def cpu_seconds(args: list[str]) -> float:
    """CPU seconds (user + system) of one ``diffice`` run in a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run(args)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cpu_per_step(overrides: list[str], folder: Path, short: int = 10, long: int = 50) -> float:
    """CPU-seconds per training step: a run of ``short`` steps, then the same folder resumed to ``long``."""
    base = ["train-ddpm", PRESET, f"paths.runs={folder}", *COMMON, *overrides]
    first = cpu_seconds([*base, f"ddpm.max_steps={short}"])
    second = cpu_seconds([*base, f"ddpm.max_steps={long}"])
    return max(1e-3, (second - first) / (long - 2 * short))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/ddpm-variants")
    ap.add_argument("--budget", type=float, default=20.0, help="CPU-minutes of training per variant")
    ap.add_argument("--count", type=int, default=64, help="clean test frames for ddpm-check")
    ap.add_argument("--only", nargs="*", default=None, help="variant names (substrings) to run")
    args = ap.parse_args()
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = ["| variant | CPU-s / step | images / CPU-s | steps in budget | head Dice [95 %] | SonoNet brain: recon vs frames (n) |",
            "|---|---|---|---|---|---|"]
    for name, ov in VARIANTS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        slug = "".join(c if c.isalnum() else "_" for c in name)[:40]
        runs = out / slug / "runs"
        speed = out / slug / "speed.json"
        if not speed.is_file():
            speed.parent.mkdir(parents=True, exist_ok=True)
            speed.write_text(json.dumps({"cpu_seconds_per_step": cpu_per_step(ov, out / slug / "timing")}))
        sps = json.loads(speed.read_text())["cpu_seconds_per_step"]
        steps = max(1, int(args.budget * 60 / sps))
        run(["train-ddpm", PRESET, f"paths.runs={runs}", f"ddpm.max_steps={steps}", *COMMON, *ov])  # resumes; done: no-op
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
