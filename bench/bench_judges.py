"""Cost of the judges inside a guided reverse step: forward + backward to the image, per frame.

    .venv/bin/python bench/bench_judges.py [--presets tiny paper] [--batch 4] [--repeat 3] [--threads N]

At every guided step Diff-ICE runs the DDPM forward pass (no backward: the gradient is taken
w.r.t. x̂0|t, paper Eq. 3-4), then the guide f(x̂0) = l(s(x̂0), x̂0) and the perceptual network
on x̂0 and on the input, each followed by a backward pass to the image. This prints, per
preset, the median milliseconds per frame of:

* guide fwd+bwd       f(x) -> d logit / dx (through l and s; weights untrained: cost only)
* perceptual fwd+bwd  perceptual_l2(P(x), P(x_ref)) -> d / dx (P = the segmenter's encoder,
                      the default; the reference features are computed once, outside the timing)
* DDPM forward        build_unet(cfg)(x, t) without gradient (skipped if diffice.nets.unet is absent)

and the judges' share relative to the DDPM forward. CUDA is used when available. Ratios within
one run are the result; absolute times depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _timing import timed as _timed  # noqa: E402
from diffice.config import load_config  # noqa: E402
from diffice.nets.features import perceptual_l2  # noqa: E402
from diffice.nets.guide import Guide  # noqa: E402
from diffice.nets.segmenter import build_segmenter  # noqa: E402


def bench(preset: str, device: torch.device, batch: int, repeat: int) -> dict:
    cfg = load_config([ROOT / "configs" / "preset" / f"{preset}.yaml"], ["trainer.accelerator=cpu"])
    h, w = cfg.data.image_size
    k = len(cfg.data.classes)
    seg = build_segmenter(cfg, k, load_pretrained=False)
    guide = Guide(seg, k, cfg.guide.sononet, cfg.guide.grad_through_segmenter).to(device).eval()
    x0 = torch.rand(batch, 1, h, w, device=device) * 2 - 1

    def guide_step():
        x = x0.clone().requires_grad_(True)
        torch.autograd.grad(guide(x).sum(), x)

    with torch.no_grad():
        ref = seg.encode(x0)

    def perceptual_step():
        x = x0.clone().requires_grad_(True)
        torch.autograd.grad(perceptual_l2(seg.encode(x), ref).sum(), x)

    row = {
        "preset": preset,
        "size": f"{h}x{w}",
        "batch": batch,
        "guide_ms": 1000 * _timed(guide_step, device, repeat) / batch,
        "perceptual_ms": 1000 * _timed(perceptual_step, device, repeat) / batch,
        "ddpm_ms": None,
    }
    try:
        from diffice.nets.unet import build_unet
    except ImportError:
        return row
    unet = build_unet(cfg).to(device).eval()
    t = torch.full((batch,), cfg.diffusion.steps // 2, device=device, dtype=torch.long)

    def ddpm_step():
        with torch.no_grad():
            unet(x0, t)

    row["ddpm_ms"] = 1000 * _timed(ddpm_step, device, repeat) / batch
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    ns = p.parse_args()
    if ns.threads:
        torch.set_num_threads(ns.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; batch {ns.batch}; median of {ns.repeat} after a warm-up; ms per frame")
    print(f"{'preset':8} {'size':9} {'guide f+b':>10} {'percep f+b':>11} {'DDPM fwd':>9} {'guide/DDPM':>11} {'percep/DDPM':>12}")
    for preset in ns.presets:
        r = bench(preset, device, ns.batch, ns.repeat)
        d = r["ddpm_ms"]
        ddpm = f"{d:9.1f}" if d else f"{'n/a':>9}"
        g = f"{r['guide_ms'] / d:11.2f}" if d else f"{'n/a':>11}"
        pc = f"{r['perceptual_ms'] / d:12.2f}" if d else f"{'n/a':>12}"
        print(f"{r['preset']:8} {r['size']:9} {r['guide_ms']:10.1f} {r['perceptual_ms']:11.1f} {ddpm} {g} {pc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
