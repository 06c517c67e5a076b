"""bf16 autocast on the CPU: counterfactuals and DDPM training steps, fp32 and bf16 interleaved.

    .venv/bin/python bench/bench_bf16.py [--frames 16] [--rounds 2] [--only cf,train]

Each measurement alternates fp32 and bf16 on the same inputs (fp32, bf16, fp32, bf16, ...), so a
ratio is measured within one run under the same load; the best round of each is kept.

- ``cf``: the demo pack's counterfactual engine at the demo setting (Diff-ICE, τ = 15 of 100,
  L = 3, λc ∈ {30, 60}, FastDiME's mask, net_batch 8) on the first ``--frames`` NSP test
  frames: seconds per frame, and how far the bf16 counterfactuals are from the fp32 ones
  (mean |Δ| in [-1, 1] units, flips that differ).
- ``train``: a DDPM training step (hybrid loss, backward, AdamW; what DDPMModule does per batch)
  at the demo pack's size (64x80) and the hc18 pack's (128x160), batch 16, under
  ``torch.autocast("cpu", torch.bfloat16)`` (Lightning's ``trainer.precision: bf16-mixed``).

Prints a markdown table (bench/RESULTS.md keeps the measured one); not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from diffice.config import config_from_args  # noqa: E402


def _best(times: list[float]) -> float:
    return min(times)


def bench_cf(frames: int, rounds: int) -> list[str]:
    from diffice.counterfactual.engine import CFSettings, CounterfactualEngine
    from diffice.data import DiffIceDataModule
    from diffice.experiments.pack import pack_words
    from diffice.modules.counterfactual import load_components

    cfg = config_from_args([str(ROOT / "configs/preset/demo.yaml"), *pack_words(ROOT / "models/demo")])
    comps = load_components(cfg)
    dm = DiffIceDataModule(cfg)
    dm.setup()
    ds = dm.dataset("test", label="NSP")
    x = torch.stack([ds[i]["image"] for i in range(frames)])
    idx = [int(ds[i]["index"]) for i in range(frames)]
    times: dict[str, list[float]] = {"none": [], "bf16": []}
    outs: dict[str, list] = {}
    for _ in range(rounds):
        for prec in ("none", "bf16"):
            s = CFSettings.from_config(cfg)
            s.autocast = prec
            eng = CounterfactualEngine(comps.diffusion, comps.model.eval(), comps.guide.eval(),
                                       comps.features.perceptual.eval(), s, comps.features.perceptual_l2)
            t0 = time.perf_counter()
            res = []
            for b in range(0, frames, int(cfg.cf.batch_size)):
                res += eng.explain(x[b:b + int(cfg.cf.batch_size)], idx[b:b + int(cfg.cf.batch_size)])
            times[prec].append((time.perf_counter() - t0) / frames)
            outs[prec] = res
    diff = torch.stack([(a.cf - b.cf).abs().mean() for a, b in zip(outs["none"], outs["bf16"])])
    flips = sum(a.flipped != b.flipped for a, b in zip(outs["none"], outs["bf16"]))
    nfe = {p: sum(r.nfe for r in outs[p]) / frames for p in outs}
    f32, b16 = _best(times["none"]), _best(times["bf16"])
    return [f"| counterfactuals, demo setting, {frames} frames (s / frame) | {f32:.2f} | {b16:.2f} | **{f32 / b16:.2f}x** | "
            f"mean \\|Δ\\| {float(diff.mean()):.4f}; flips differ on {flips} of {frames}; NFE / frame {nfe['none']:.0f} vs "
            f"{nfe['bf16']:.0f} |"]


def bench_train(rounds: int, steps: int = 3) -> list[str]:
    from diffice.modules.ddpm import DDPMModule

    rows = []
    for preset, size in (("demo", [64, 80]), ("hc18", [128, 160])):
        cfg = config_from_args([str(ROOT / f"configs/preset/{preset}.yaml"), f"data.image_size={size}".replace(" ", "")])
        torch.manual_seed(0)
        module = DDPMModule(cfg)
        opt = torch.optim.AdamW(module.model.parameters(), lr=1e-4)
        x = torch.rand(16, 1, *size) * 2 - 1
        max_t = module.max_train_t()

        def step(bf16: bool, module=module, opt=opt, x=x, max_t=max_t):
            t = torch.randint(0, max_t, (16,))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = module.diffusion.training_losses(module.model, x, t)["loss"].mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        times: dict[bool, list[float]] = {False: [], True: []}
        for bf16 in (False, True):
            step(bf16)  # warm-up
        for _ in range(rounds):
            for bf16 in (False, True):
                t0 = time.perf_counter()
                for _ in range(steps):
                    step(bf16)
                times[bf16].append((time.perf_counter() - t0) / steps)
        f32, b16 = _best(times[False]), _best(times[True])
        rows.append(f"| DDPM training step, {preset} UNet at {size[0]}x{size[1]}, batch 16 (s / step) | {f32:.2f} | "
                    f"{b16:.2f} | **{f32 / b16:.2f}x** | |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", default="cf,train")
    ns = p.parse_args()
    parts = set(ns.only.split(","))
    rows = ["| what | fp32 | bf16 autocast | speed-up | outputs |", "|---|---|---|---|---|"]
    if "train" in parts:
        rows += bench_train(ns.rounds)
    if "cf" in parts:
        rows += bench_cf(ns.frames, ns.rounds)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
