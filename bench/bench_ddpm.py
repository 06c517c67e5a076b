"""DDPM speed: training frames/s, sampling s/frame, the forward pass's share of a training step.

    .venv/bin/python bench/bench_ddpm.py [--threads N] [--steps K] [--skip-gpu]

CPU: the tiny preset (64x80 frames, batch 16). GPU (when CUDA is available): the paper preset
(224x288, batch 16) in fp32 and bf16 autocast, with peak memory. A training step here is what
DDPMModule does per batch without Lightning around it: the hybrid loss at uniform t, backward,
gradient clipping, AdamW and the EMA update. Sampling is timed over a few reverse steps of a
batch and scaled to the preset's respacing (cost per step is constant). Prints a table; the
numbers are ratios within one run on one machine, not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _timing import timed as _timed  # noqa: E402
from diffice.config import load_config  # noqa: E402
from diffice.modules.ddpm import DDPMModule  # noqa: E402
from diffice.nets.unet import count_parameters  # noqa: E402


def bench(preset: str, device: torch.device, dtype: torch.dtype | None, steps: int, sample_steps: int) -> dict:
    cfg = load_config([ROOT / f"configs/preset/{preset}.yaml"], ["wandb.mode=disabled"])
    module = DDPMModule(cfg).to(device)
    opt = module.configure_optimizers()
    bs = int(cfg.data.batch_size)
    h, w = (int(s) for s in cfg.data.image_size)
    x0 = torch.rand(bs, 1, h, w, device=device) * 2 - 1
    T = module.diffusion.num_timesteps
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def forward_only():
        t = torch.randint(0, T, (bs,), device=device)
        with autocast:
            module.model(module.diffusion.q_sample(x0, t), t)

    def train_step():
        t = torch.randint(0, T, (bs,), device=device)
        with autocast:
            loss = module.diffusion.training_losses(module.model, x0, t)["loss"].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        module.update_ema()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_s = _timed(train_step, device, steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    fwd_s = _timed(forward_only, device, steps)  # with autograd recording, as inside a training step

    sampler = module.sampler()
    n_sample = min(bs, 8)
    x = torch.randn(n_sample, 1, h, w, device=device)
    k = torch.full((n_sample,), sampler.num_timesteps - 1, device=device)

    def reverse_step():
        with torch.no_grad(), autocast:
            sampler.p_sample(module.ema_model, x, k)

    rev_s = _timed(reverse_step, device, sample_steps)
    return {
        "preset": preset,
        "device": device.type if device.type == "cpu" else torch.cuda.get_device_name(device),
        "precision": "fp32" if dtype is None else str(dtype).replace("torch.", ""),
        "frames": f"{h}x{w}",
        "params_M": count_parameters(module.model) / 1e6,
        "batch": bs,
        "step_s": step_s,
        "train_frames_per_s": bs / step_s,
        "forward_share": fwd_s / step_s,
        "respacing": sampler.num_timesteps,
        "sample_s_per_frame": rev_s * sampler.num_timesteps / n_sample,
        "peak_mem_GiB": peak,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps per setting (median)")
    p.add_argument("--sample-steps", type=int, default=5, help="timed reverse steps per setting (median)")
    p.add_argument("--skip-gpu", action="store_true")
    ns = p.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    if ns.threads:
        torch.set_num_threads(ns.threads)
    torch.manual_seed(0)
    rows = [bench("tiny", torch.device("cpu"), None, ns.steps, ns.sample_steps)]
    if torch.cuda.is_available() and not ns.skip_gpu:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        for dtype in (None, torch.bfloat16):
            rows.append(bench("paper", torch.device("cuda"), dtype, ns.steps, ns.sample_steps))
    else:
        print("(no CUDA device: the paper-preset GPU rows are skipped)")
    cols = ["preset", "device", "precision", "frames", "params_M", "batch", "step_s", "train_frames_per_s",
            "forward_share", "respacing", "sample_s_per_frame", "peak_mem_GiB"]
    print(f"torch threads: {torch.get_num_threads()}")
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    return rows


if __name__ == "__main__":
    main()
