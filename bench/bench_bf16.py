"""bf16 autocast on the CPU: counterfactuals and DDPM training steps, fp32 and bf16 interleaved.

    .venv/bin/python bench/bench_bf16.py [--frames 16] [--rounds 2] [--only cf,fast,train,synth]

Each measurement alternates fp32 and bf16 on the same inputs (fp32, bf16, fp32, bf16, ...), so a
ratio is measured within one run under the same load; the best round of each is kept.

- ``cf``: the demo pack's counterfactual engine at the demo setting as it was before issues 23
  and 28 (Diff-ICE, τ = 15 of 100, L = 3, λc ∈ {30, 60}, FastDiME's mask, net_batch 8, no
  adaptive stopping, no sparse refinement) on the first ``--frames`` NSP test
  frames: seconds per frame, and how far the bf16 counterfactuals are from the fp32 ones
  (mean |Δ| in [-1, 1] units, flips that differ).
- ``fast``: the same frames at the demo setting as it was (fp32, every frame all L passes), with
  bf16 and adaptive stopping (a frame stops once the guide gives it p ≥ 0.9), and with those plus
  the sparse refinement (issue 23; the demo preset now): counterfactual frames per CPU-minute of
  each, interleaved.
- ``train``: a DDPM training step (hybrid loss, backward, AdamW; what DDPMModule does per batch)
  at the demo pack's size (64x80) and the hc18 pack's (128x160), and a synthesis model's step
  (the layout-conditioned UNet of the demo preset, all T noise levels), batch 16, under
  ``torch.autocast("cpu", torch.bfloat16)`` (Lightning's ``trainer.precision: bf16-mixed``).
- ``synth``: the demo pack's synthesis page on 8 test layouts (2 samples each, two edits of each)
  with ``synthesis.autocast`` none, then bf16: seconds and the judge's layout Dice per structure.

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


OLD_DEMO = {"autocast": "none", "adaptive": False, "lambda_search": "restart"}


def _cf_variants(frames: int, rounds: int, variants: dict[str, dict]) -> tuple[dict, dict]:
    """Seconds per frame (best round) and results of the demo pack's engine at the demo preset's
    setting changed by each variant's CFSettings fields, interleaved round by round."""
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
    times: dict[str, list[float]] = {k: [] for k in variants}
    outs: dict[str, list] = {}
    bs = int(cfg.cf.batch_size)
    for _ in range(rounds):
        for name, fields in variants.items():
            s = CFSettings.from_config(cfg)
            for key, value in fields.items():
                setattr(s, key, value)
            eng = CounterfactualEngine(comps.diffusion, comps.model.eval(), comps.guide.eval(),
                                       comps.features.perceptual.eval(), s, comps.features.perceptual_l2,
                                       segment=comps.guide.segment)
            t0 = time.perf_counter()
            res = []
            for b in range(0, frames, bs):
                res += eng.explain(x[b:b + bs], idx[b:b + bs])
            times[name].append((time.perf_counter() - t0) / frames)
            outs[name] = res
    return {k: _best(v) for k, v in times.items()}, outs


def bench_cf(frames: int, rounds: int) -> list[str]:
    from diffice.counterfactual import SparseSettings

    before = {**OLD_DEMO, "sparse": SparseSettings()}  # the demo setting before issues 23 and 28, only the precision changes
    secs, outs = _cf_variants(frames, rounds, {"none": before, "bf16": {**before, "autocast": "bf16"}})
    diff = torch.stack([(a.cf - b.cf).abs().mean() for a, b in zip(outs["none"], outs["bf16"], strict=True)])
    flips = sum(a.flipped != b.flipped for a, b in zip(outs["none"], outs["bf16"], strict=True))
    nfe = {p: sum(r.nfe for r in outs[p]) / frames for p in outs}
    f32, b16 = secs["none"], secs["bf16"]
    return [f"| counterfactuals, demo setting, {frames} frames (s / frame) | {f32:.2f} | {b16:.2f} | **{f32 / b16:.2f}x** | "
            f"mean \\|Δ\\| {float(diff.mean()):.4f}; flips differ on {flips} of {frames}; NFE / frame {nfe['none']:.0f} vs "
            f"{nfe['bf16']:.0f} |"]


def bench_fast(frames: int, rounds: int) -> list[str]:
    from diffice.counterfactual import SparseSettings

    # relative to the demo preset as it is now: before = fp32, all L passes, no sparse refinement
    old = {**OLD_DEMO, "sparse": SparseSettings()}
    fast = {"sparse": SparseSettings()}
    secs, outs = _cf_variants(frames, rounds, {"old": old, "fast": fast, "demo": {}})
    nfe = {p: sum(r.nfe for r in outs[p]) / frames for p in outs}
    fr = {p: sum(r.flipped for r in outs[p]) for p in outs}
    what = {"fast": "bf16, a frame stops at p ≥ 0.9", "demo": "the demo preset now (the same + sparse refinement)"}
    return [f"| counterfactual frames per CPU-minute at the demo setting: before (fp32, all L passes) vs {what[k]}, "
            f"{frames} frames | {60 / secs['old']:.1f} | {60 / secs[k]:.1f} | **{secs['old'] / secs[k]:.2f}x** | "
            f"NFE / frame {nfe['old']:.1f} vs {nfe[k]:.1f}; flipped {fr['old']} vs {fr[k]} of {frames} |" for k in ("fast", "demo")]


def bench_synth(layouts: int = 8) -> list[str]:
    """The demo pack's synthesis page (``--test``: ``layouts`` test layouts x 2 samples, two edits of each),
    fp32 then bf16 (``synthesis.autocast``), into a temporary folder: seconds and the judge's layout Dice."""
    import json
    import tempfile

    from diffice.experiments.pack import pack_words
    from diffice.experiments.synthesis import synthesize_test

    secs, dice = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for prec in ("none", "bf16"):
            cfg = config_from_args([str(ROOT / "configs/preset/demo.yaml"), f"paths.runs={tmp}", *pack_words(ROOT / "models/demo"),
                                    "wandb.mode=disabled", f"synthesis.limit={layouts}", "synthesis.count=2",
                                    "synthesis.edits=[remove:csp,grow:th:2]", f"synthesis.autocast={prec}"])
            t0 = time.perf_counter()
            synthesize_test(cfg, cfg.synthesis.ckpt, Path(tmp) / prec, realism=False)
            secs[prec] = time.perf_counter() - t0
            m = json.loads((Path(tmp) / prec / "metrics.json").read_text())
            dice[prec] = m["dice"]
    cells = ", ".join(f"{k} {dice['none'][k]:.3f} vs {dice['bf16'][k]:.3f}" for k in sorted(dice["none"]))
    return [f"| synthesis --test with the demo pack, {layouts} layouts x 2 samples + their edits (s) | {secs['none']:.1f} | "
            f"{secs['bf16']:.1f} | **{secs['none'] / secs['bf16']:.2f}x** | layout Dice {cells} |"]


def _synthesis_net(module, size: list[int]):
    """The synthesis UNet with a full random condition (layout, plane, GA) of batch 16."""
    from diffice.modules.synthesis import condition_of
    from diffice.nets.conditional import Conditioned

    mask = torch.randint(0, module.num_classes, (16, *size))
    cond = condition_of({"mask": mask, "plane": torch.randint(0, 3, (16,)), "ga": torch.rand(16) * 20 + 18}, module.num_classes)
    return Conditioned(module.model, cond)


def bench_train(rounds: int, steps: int = 3) -> list[str]:
    from diffice.modules.ddpm import DDPMModule
    from diffice.modules.synthesis import SynthesisModule

    rows = []
    for what, preset, size in (("DDPM", "demo", [64, 80]), ("DDPM", "hc18", [128, 160]), ("synthesis", "demo", [64, 80])):
        cfg = config_from_args([str(ROOT / f"configs/preset/{preset}.yaml"), f"data.image_size={size}".replace(" ", "")])
        torch.manual_seed(0)
        module = SynthesisModule(cfg, load_pretrained=False) if what == "synthesis" else DDPMModule(cfg)
        net = _synthesis_net(module, size) if what == "synthesis" else module.model
        opt = torch.optim.AdamW(module.model.parameters(), lr=1e-4)
        x = torch.rand(16, 1, *size) * 2 - 1
        max_t = module.max_train_t()

        def step(bf16: bool, module=module, net=net, opt=opt, x=x, max_t=max_t):
            t = torch.randint(0, max_t, (16,))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = module.diffusion.training_losses(net, x, t)["loss"].mean()
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
        rows.append(f"| {what} training step, {preset} UNet at {size[0]}x{size[1]}, batch 16 (s / step) | {f32:.2f} | "
                    f"{b16:.2f} | **{f32 / b16:.2f}x** | |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", default="cf,fast,train,synth")
    ns = p.parse_args()
    parts = set(ns.only.split(","))
    rows = ["| what | fp32 | bf16 autocast | speed-up | outputs |", "|---|---|---|---|---|"]
    if "train" in parts:
        rows += bench_train(ns.rounds)
    if "cf" in parts:
        rows += bench_cf(ns.frames, ns.rounds)
    if "fast" in parts:
        rows += bench_fast(ns.frames, ns.rounds)
    if "synth" in parts:
        rows += bench_synth()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
