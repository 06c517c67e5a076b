"""Counterfactual cost benchmarks (issue 6). Prints ratios measured in one run.

1. Framework efficiency: a Diff-ICE run's wall time against the compute it cannot avoid
   (denoiser forwards, guide + perceptual forward+backward), each timed alone in the same
   run with the same batch. Aim: 0.9 or better.
2. The paper's cost structure: DiME / Diff-ICE1 wall time (paper: 27x at tau = 120 of 400)
   and Diff-ICE1-xt / Diff-ICE1 peak memory (paper: 3.5x; CPU: peak RSS above a baseline
   process that only loads the networks, each method in its own process).
3. Adaptive iteration: denoiser evaluations and time saved at equal flip ratio, on the trained
   models of a finished `make demo` (runs/), skipped when they are absent.
4. On a CUDA device: the paper's setting (224x288, tau = 120 of 400, L = 5, batch 10) in seconds
   per frame and peak memory, fp32 and bf16.

    .venv/bin/python bench/bench_cf.py [--quick]

Networks in 1, 2 and 4 are randomly initialised (cost does not depend on the weights); the
guide's logit is kept NSP by never flipping lambda_c retries (one lambda_c), so every frame
runs the full schedule.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import _timing  # noqa: E402  (bench/ is on sys.path when a benchmark runs as a script)
from diffice.config import load_config  # noqa: E402
from diffice.counterfactual.engine import CFSettings, CounterfactualEngine  # noqa: E402
from diffice.diffusion import build_diffusion  # noqa: E402
from diffice.nets.features import perceptual_l2  # noqa: E402
from diffice.nets.guide import Guide  # noqa: E402
from diffice.nets.segmenter import build_segmenter  # noqa: E402
from diffice.nets.unet import build_unet  # noqa: E402


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def build(preset: str, overrides: list[str], device: torch.device):
    """Random-init denoiser, guide and perceptual net of a preset; frozen, eval mode."""
    cfg = load_config([ROOT / f"configs/preset/{preset}.yaml"], ["wandb.mode=disabled", *overrides])
    model = build_unet(cfg).to(device).eval()
    seg = build_segmenter(cfg, len(cfg.data.classes), load_pretrained=False)
    guide = Guide(seg, len(cfg.data.classes), int(cfg.guide.sononet)).to(device).eval()
    from diffice.nets.features import _SegmenterEncoder

    perceptual = _SegmenterEncoder(seg).to(device).eval()
    for net in (model, guide, perceptual):
        for p in net.parameters():
            p.requires_grad_(False)
    diffusion = build_diffusion(cfg, respacing=str(cfg.cf.respacing))
    return cfg, diffusion, model, guide, perceptual


def engine_for(method: str, tau: int, iterations: int, parts, adaptive=False, lambda_c=(40.0,)):
    cfg, diffusion, model, guide, perceptual = parts
    s = CFSettings(method=method, tau=tau, iterations=iterations, lambda_c=list(lambda_c),
                   lambda_p=30.0, adaptive=adaptive, seed=0)
    return CounterfactualEngine(diffusion, model, guide, perceptual, s, perceptual_l2)


class _NeverSP(torch.nn.Module):
    """Wraps a guide so that no frame is ever called SP (every lambda_c attempt runs fully)."""

    def __init__(self, guide):
        super().__init__()
        self.guide = guide

    def forward(self, x):
        return self.guide(x) - 1e4


def timed(fn, device, repeat: int = 1) -> float:
    return _timing.timed(fn, device, repeat, warmup=False)


def framework_efficiency(parts, batch: int, tau: int, iterations: int, device) -> dict:
    cfg, diffusion, model, guide, perceptual = parts
    h, w = cfg.data.image_size
    x = torch.rand(batch, 1, h, w, device=device) * 2 - 1
    eng = engine_for("diff-ice", tau, iterations, (cfg, diffusion, model, _NeverSP(guide), perceptual))
    eng.explain(x[:1], [0])  # warm-up
    wall = timed(lambda: eng.explain(x, list(range(batch))), device)
    calls = tau * iterations
    t = torch.full((batch,), max(0, tau // 2), device=device, dtype=torch.long)
    t_orig = diffusion.timestep_map.to(device)[t]
    with torch.no_grad():
        model(x, t_orig)
    denoise = timed(lambda: torch.no_grad()(model)(x, t_orig), device, repeat=5)
    anchor = eng.loss.anchor(x)
    lam = torch.full((batch,), 40.0, device=device)
    eng.grad_x0(x, anchor, lam)
    grad = timed(lambda: eng.grad_x0(x, anchor, lam), device, repeat=5)
    unavoidable = calls * (denoise + grad)
    return {
        "batch": batch, "tau": tau, "iterations": iterations, "wall_s": wall,
        "denoiser_s_per_call": denoise, "guide_perceptual_fwd_bwd_s_per_call": grad,
        "unavoidable_s": unavoidable, "efficiency": unavoidable / wall,
        "denoiser_share_of_unavoidable": denoise / (denoise + grad),
    }


def method_time_ratio(parts, batch: int, tau: int, device) -> dict:
    cfg = parts[0]
    h, w = cfg.data.image_size
    x = torch.rand(batch, 1, h, w, device=device) * 2 - 1
    never = (parts[0], parts[1], parts[2], _NeverSP(parts[3]), parts[4])
    times = {}
    for method in ("diff-ice1", "dime", "diff-ice1-xt"):
        eng = engine_for(method, tau, 1, never)
        times[method] = timed(lambda eng=eng: eng.explain(x, list(range(batch))), device)
    return {"tau": tau, "batch": batch, "seconds": times,
            "dime_over_diffice1": times["dime"] / times["diff-ice1"],
            "xt_over_diffice1": times["diff-ice1-xt"] / times["diff-ice1"]}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_probe(method: str, preset: str, overrides: list[str], batch: int, tau: int) -> int:
    """Run in a child process: peak memory (bytes) that one run of ``method`` adds.

    CUDA: peak allocated during the run. CPU: resident memory sampled every 2 ms during the run,
    minus the resident memory just before it (the loaded networks and inputs).
    """
    import threading

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parts = build(preset, overrides, device)
    cfg = parts[0]
    h, w = cfg.data.image_size
    x = torch.rand(batch, 1, h, w, device=device) * 2 - 1
    never = (parts[0], parts[1], parts[2], _NeverSP(parts[3]), parts[4])
    eng = engine_for(method, tau, 1, never)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        eng.explain(x, list(range(batch)))
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    before = _rss_bytes()
    peak = [before]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    eng.explain(x, list(range(batch)))
    done.set()
    th.join()
    return int(max(peak[0], _rss_bytes()) - before)


def memory_ratio(preset: str, overrides: list[str], batch: int, tau: int) -> dict:
    added = {}
    for method in ("diff-ice1", "diff-ice1-xt"):
        cmd = [sys.executable, __file__, "--memory-probe", method, "--preset", preset, "--batch", str(batch),
               "--tau", str(tau), *[f"--set={o}" for o in overrides]]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "WANDB_MODE": "disabled"})
        added[method] = int(out.stdout.strip().splitlines()[-1])
    return {"added_bytes": added, "xt_over_diffice1": added["diff-ice1-xt"] / max(1, added["diff-ice1"])}


def adaptive_saving(runs: Path, limit: int) -> dict | None:
    """Diff-ICE with and without adaptive stopping on the demo's trained models."""
    need = [runs / s / "last.ckpt" for s in ("ddpm", "classifier", "oracle")]
    if not all(p.is_file() for p in need):
        return None
    from diffice.modules.cf_inputs import select_inputs
    from diffice.modules.counterfactual import load_components

    cfg = load_config([ROOT / "configs/preset/tiny.yaml"], [f"paths.runs={runs}", "wandb.mode=disabled"])
    from diffice.data import DiffIceDataModule

    comp = load_components(cfg)
    dm = DiffIceDataModule(cfg)
    dm.setup()
    ds, positions, indices = select_inputs(cfg, dm)
    n = min(limit, len(positions))
    x = torch.stack([ds[p]["image"] for p in positions[:n]])
    idx = indices[:n]
    out = {}
    for adaptive in (False, True):
        s = CFSettings.from_config(cfg)
        s.adaptive = adaptive
        eng = CounterfactualEngine(comp.diffusion, comp.model, comp.guide, comp.features.perceptual, s,
                                   comp.features.perceptual_l2)
        t0 = time.perf_counter()
        res = eng.explain(x, idx)
        out["adaptive" if adaptive else "fixed"] = {
            "seconds": time.perf_counter() - t0,
            "nfe": sum(r.nfe for r in res),
            "flip_ratio": sum(r.flipped for r in res) / n,
        }
    out["frames"] = n
    out["nfe_saved"] = 1 - out["adaptive"]["nfe"] / out["fixed"]["nfe"]
    out["time_saved"] = 1 - out["adaptive"]["seconds"] / out["fixed"]["seconds"]
    return out


def gpu_paper(device) -> dict:
    parts = build("paper", ["trainer.accelerator=gpu"], device)
    cfg = parts[0]
    h, w = cfg.data.image_size
    res = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        x = torch.rand(10, 1, h, w, device=device) * 2 - 1
        never = (parts[0], parts[1], parts[2], _NeverSP(parts[3]), parts[4])
        eng = engine_for("diff-ice", 120, 5, never)
        torch.cuda.reset_peak_memory_stats(device)
        ctx = torch.autocast("cuda", dtype=dtype) if dtype else torch.autocast("cuda", enabled=False)
        with ctx:
            sec = timed(lambda eng=eng, x=x: eng.explain(x, list(range(10))), device)
        res[name] = {"seconds_per_frame": sec / 10, "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9}
    return res


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="smaller tau and batch (a smoke run)")
    p.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tau", type=int, default=20)
    p.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--runs", default=str(ROOT / "runs"), help="trained models for the adaptive benchmark")
    p.add_argument("--only", default="1,2,3,4", help="which parts to run, e.g. --only 2,3")
    ns = p.parse_args()
    torch.manual_seed(0)
    if ns.memory_probe:
        print(memory_probe(ns.memory_probe, ns.preset, ns.set, ns.batch, ns.tau))
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch, tau = (4, 6) if ns.quick else (ns.batch, ns.tau)
    overrides = [f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}"]
    parts = build(ns.preset, overrides, device)
    h, w = parts[0].data.image_size
    results: dict = {"machine": machine(), "preset": ns.preset, "image_size": [h, w]}
    print(f"# bench_cf on {results['machine']}, preset {ns.preset} ({h}x{w})")

    only = {part.strip() for part in ns.only.split(",")}
    if "1" in only:
        eff = framework_efficiency(parts, batch, tau, 2, device)
        results["framework_efficiency"] = eff
        print(f"1. framework efficiency (Diff-ICE, batch {batch}, tau {tau}, L 2): {eff['efficiency']:.2f} "
              f"(unavoidable {eff['unavoidable_s']:.2f} s / wall {eff['wall_s']:.2f} s; denoiser "
              f"{eff['denoiser_share_of_unavoidable']:.0%} of the unavoidable compute)")
    if "2" in only:
        tr = method_time_ratio(parts, batch, tau, device)
        results["time_ratio"] = tr
        print(f"2a. DiME / Diff-ICE1 time at tau {tau}: {tr['dime_over_diffice1']:.1f}x "
              f"(paper at tau 120: 27x); Diff-ICE1-xt / Diff-ICE1 time: {tr['xt_over_diffice1']:.2f}x (paper: 2.0x)")
        mr = memory_ratio(ns.preset, overrides, batch, tau)
        results["memory_ratio"] = mr
        print(f"2b. Diff-ICE1-xt / Diff-ICE1 memory added by the run: {mr['xt_over_diffice1']:.2f}x (paper: 3.5x)")
    if "3" in only:
        ad = adaptive_saving(Path(ns.runs), 16 if not ns.quick else 4)
        results["adaptive"] = ad
        if ad is None:
            print(f"3. adaptive iteration: skipped (no trained models in {ns.runs}; run `make demo` first)")
        else:
            print(f"3. adaptive iteration on {ad['frames']} demo frames: flip ratio {ad['fixed']['flip_ratio']:.2f} -> "
                  f"{ad['adaptive']['flip_ratio']:.2f}, denoiser evaluations saved {ad['nfe_saved']:.0%}, "
                  f"time saved {ad['time_saved']:.0%}")
    if "4" not in only:
        pass
    elif device.type == "cuda":
        results["gpu_paper"] = gpu_paper(device)
        for k, v in results["gpu_paper"].items():
            print(f"4. paper setting {k}: {v['seconds_per_frame']:.1f} s/frame, peak {v['peak_memory_gb']:.1f} GB "
                  "(paper, RTX A6000: 44.9 s/frame, 9.6 GB per batch)")
    else:
        print("4. paper setting on GPU: skipped (no CUDA device)")
    print("json: " + json.dumps(results))


if __name__ == "__main__":
    main()
