"""The paper's setting on one CUDA GPU, measured in one call (bench/gpu_paper.sh runs it).

    .venv/bin/python bench/gpu_paper.py [--results bench/RESULTS.md] [--steps 4]
    .venv/bin/python bench/gpu_paper.py --device cpu --shrink      # the same logic at 32x40 (tests)

Diff-ICE at the paper preset (224x288, τ = 120 of 400, L = 5, batch 10, λp = 30; DDPM, guide and
perceptual network of configs/preset/paper.yaml with random weights: cost does not depend on the
weights) in four variants: fp32 and bf16 autocast (``cf.autocast``), each without and with
``torch.compile`` of the denoiser. A whole frame takes τ × L guided steps (600; the paper reports
44.9 s per frame on an RTX A6000), so each variant times ``--steps`` guided steps of one batch
after a warm-up (compilation included in the warm-up, reported apart) and scales: seconds per
frame = seconds per step × τ × L / batch. Peak memory is CUDA's ``max_memory_allocated`` over
the timed steps. The whole call stays well under 8 minutes on an H100-class GPU (the compile
warm-ups dominate).

The numbers go into ``--results`` between the markers ``<!-- gpu_paper:begin -->`` and
``<!-- gpu_paper:end -->`` (added at the end the first time), replacing the previous block.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from diffice.config import load_config  # noqa: E402
from diffice.counterfactual.engine import CFSettings, CounterfactualEngine  # noqa: E402
from diffice.counterfactual.seeding import frame_generators  # noqa: E402
from diffice.diffusion import build_diffusion  # noqa: E402
from diffice.nets.features import _SegmenterEncoder, perceptual_l2  # noqa: E402
from diffice.nets.guide import Guide  # noqa: E402
from diffice.nets.segmenter import build_segmenter  # noqa: E402
from diffice.nets.unet import build_unet  # noqa: E402

BEGIN, END = "<!-- gpu_paper:begin -->", "<!-- gpu_paper:end -->"
PAPER_SECONDS_PER_FRAME = 44.9  # RTX A6000, the paper's Table 1 (Diff-ICE, L = 5)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(device: torch.device, shrink: bool):
    over = ["wandb.mode=disabled"]
    if shrink:  # the same code path on a CPU in seconds
        over += ["data.image_size=[32,40]", "unet.model_channels=16", "unet.channel_mult=[1,2]",
                 "unet.num_res_blocks=1", "unet.attention_resolutions=[]", "unet.num_head_channels=16",
                 "segmenter.encoder=resnet18",
                 "cf.tau=3", "cf.iterations=2", "cf.batch_size=2"]
    cfg = load_config([ROOT / "configs/preset/paper.yaml"], over)
    model = build_unet(cfg).to(device).eval().requires_grad_(False)
    seg = build_segmenter(cfg, len(cfg.data.classes), load_pretrained=False)
    guide = Guide(seg, len(cfg.data.classes), int(cfg.guide.sononet)).to(device).eval().requires_grad_(False)
    perceptual = _SegmenterEncoder(seg).to(device).eval().requires_grad_(False)
    return cfg, build_diffusion(cfg, respacing=str(cfg.cf.respacing)), model, guide, perceptual


def measure(cfg, diffusion, model, guide, perceptual, device, precision: str, compile_: bool, steps: int) -> dict:
    c = cfg.cf
    batch = int(c.batch_size)
    h, w = (int(s) for s in cfg.data.image_size)
    net = torch.compile(model) if compile_ else model
    s = CFSettings(method="diff-ice", tau=int(c.tau), iterations=int(c.iterations), lambda_c=[float(c.lambda_c[0])],
                   lambda_p=float(c.lambda_p), seed=0, autocast=precision, net_batch=None)
    eng = CounterfactualEngine(diffusion, net, guide, perceptual, s, perceptual_l2)
    x = torch.rand(batch, 1, h, w, device=device) * 2 - 1
    anchor = eng.loss.anchor(x)
    lam = torch.full((batch,), float(c.lambda_c[0]), device=device)
    gens = frame_generators(0, list(range(batch)), 0)

    def step(x_t, i):
        t = torch.full((batch,), i, device=device, dtype=torch.long)
        return eng._step_x0(x_t, t, anchor, lam, gens)[0]  # one guided step: denoiser + guide/perceptual gradient

    _sync(device)
    t0 = time.perf_counter()
    x_t = step(x.clone(), int(c.tau) - 1)  # warm-up (and compilation)
    _sync(device)
    warm = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for k in range(steps):
        x_t = step(x_t, max(0, int(c.tau) - 2 - k))
    _sync(device)
    per_step = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    assert torch.isfinite(x_t).all()
    return {"precision": precision, "compile": compile_, "seconds_per_step": per_step,
            "seconds_per_frame": per_step * int(c.tau) * int(c.iterations) / batch,
            "warmup_seconds": warm, "peak_memory_gb": peak}


def results_block(rows: list[dict], cfg, device: torch.device, steps: int) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    h, w = cfg.data.image_size
    c = cfg.cf
    base = rows[0]["seconds_per_frame"]
    lines = [BEGIN, f"### The paper's setting on {name} — `bench/gpu_paper.sh`", "",
             f"{datetime.date.today().isoformat()}, torch {torch.__version__}: Diff-ICE at {h}x{w}, τ = {c.tau} of "
             f"{c.respacing}, L = {c.iterations}, batch {c.batch_size}, random weights; {steps} guided steps timed per "
             f"variant after a warm-up, scaled to τ × L steps per frame (paper, RTX A6000: {PAPER_SECONDS_PER_FRAME} s/frame).",
             "", "| precision | torch.compile | s / frame | vs fp32 | s / guided step (batch) | peak memory (GB) | warm-up (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = "–" if r["peak_memory_gb"] is None else f"{r['peak_memory_gb']:.1f}"
        lines.append(f"| {r['precision']} | {'yes' if r['compile'] else 'no'} | {r['seconds_per_frame']:.2f} | "
                     f"{base / r['seconds_per_frame']:.2f}x | {r['seconds_per_step']:.3f} | {mem} | {r['warmup_seconds']:.1f} |")
    lines.append(END)
    return "\n".join(lines)


def write_results(path: Path, block: str) -> None:
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--shrink", action="store_true", help="a 32x40 stand-in of the setting (the logic, on a CPU)")
    p.add_argument("--steps", type=int, default=4, help="guided steps timed per variant")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    ns = p.parse_args(argv)
    if ns.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_paper: no CUDA GPU on this machine; nothing measured (run bench/gpu_paper.sh on one)")
        return 0
    device = torch.device(ns.device)
    torch.manual_seed(0)
    cfg, diffusion, model, guide, perceptual = build(device, ns.shrink)
    rows = []
    for compile_ in (False,) if ns.no_compile else (False, True):
        for precision in ("none", "bf16"):
            r = measure(cfg, diffusion, model, guide, perceptual, device, precision, compile_, ns.steps)
            r["precision"] = "fp32" if precision == "none" else "bf16"
            rows.append(r)
            print(f"{r['precision']:>4} compile={str(compile_):5} {r['seconds_per_frame']:.2f} s/frame "
                  f"(step {r['seconds_per_step']:.3f} s, warm-up {r['warmup_seconds']:.1f} s)", flush=True)
    block = results_block(rows, cfg, device, ns.steps)
    write_results(Path(ns.results), block)
    print(f"written: {ns.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
