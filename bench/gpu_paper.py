"""The paper's setting on one CUDA GPU, measured in one call (bench/gpu_paper.sh runs it).

    .venv/bin/python bench/gpu_paper.py [--rows ROWS.jsonl] [--results bench/RESULTS.md] [--steps 4]
    .venv/bin/python bench/gpu_paper.py --device cpu --shrink      # the same logic at 32x40 (tests)

Diff-ICE at the paper preset (224x288, τ = 120 of 400, L = 5, batch 10, λp = 30; DDPM, guide and
perceptual network of configs/preset/paper.yaml with random weights: cost does not depend on the
weights; the perceptual network is the config's ``features.perceptual``, by default ``ddpm``, the
denoiser's own down path, differentiated at every guided step) in four variants: fp32 (TF32 off:
``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` are False during
those rows) and bf16 autocast (``cf.autocast``, PyTorch's TF32 defaults), each without and with
``torch.compile`` of the denoiser. A whole frame takes τ × L guided steps (600; the paper reports
44.9 s per frame on an RTX A6000), so each variant times ``--steps`` guided steps of one batch
after a warm-up (compilation included in the warm-up, reported apart) and scales: seconds per
frame = seconds per step × τ × L / batch. Peak memory is CUDA's ``max_memory_allocated`` over
the timed steps. The whole call stays well under 8 minutes on an H100-class GPU (the compile
warm-ups dominate).

Each row is written as soon as it is measured: appended to ``--rows`` (one JSON object a line; the
file is started afresh) and into ``--results`` between the markers ``<!-- gpu_paper:begin -->`` and
``<!-- gpu_paper:end -->`` (added at the end the first time), replacing the previous block, so a
call cut short keeps the rows it finished.

Without CUDA: where no GPU is present it says so in one line and exits 0; where one is (``nvidia-smi
-L`` lists one, or ``/dev/nvidia0`` exists) but torch cannot use it (a CPU-only build, a driver
older than torch's CUDA) it says why in one line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from diffice.config import load_config  # noqa: E402
from diffice.counterfactual.engine import CFSettings, CounterfactualEngine  # noqa: E402
from diffice.counterfactual.seeding import frame_generators  # noqa: E402
from diffice.diffusion import build_diffusion  # noqa: E402
from diffice.nets.features import build_perceptual, perceptual_l2  # noqa: E402
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
    # the perceptual network a counterfactual run uses (features.perceptual; default: the DDPM's down path)
    perceptual = build_perceptual(cfg, guide, ddpm=model).to(device).eval().requires_grad_(False)
    return cfg, build_diffusion(cfg, respacing=str(cfg.cf.respacing)), model, guide, perceptual


@contextmanager
def tf32_off():
    """float32 matrix products and convolutions in float32, not TF32 (restored on the way out)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def gpu_present() -> str | None:
    """What shows an NVIDIA GPU on this machine (``nvidia-smi -L``'s first line, ``/dev/nvidia0``), or None."""
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            res = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            res = None
        if res is not None and res.returncode == 0 and res.stdout.strip():
            return res.stdout.strip().splitlines()[0]
    return "/dev/nvidia0" if os.path.exists("/dev/nvidia0") else None


def cuda_problem() -> str:
    """Why torch cannot use CUDA here, in a few words."""
    if torch.version.cuda is None:
        return "a CPU-only build of torch"
    try:
        torch.cuda.init()
    except Exception as err:  # noqa: BLE001 - its message is the answer
        return " ".join(str(err).split())[:300] or type(err).__name__
    return f"torch.cuda.is_available() is False (built for CUDA {torch.version.cuda})"


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

    with tf32_off() if precision == "none" else nullcontext():  # fp32 rows: float32 kernels, not TF32
        tf32 = torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32
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
    return {"precision": precision, "compile": compile_, "tf32": bool(tf32), "perceptual": str(cfg.features.perceptual),
            "seconds_per_step": per_step, "seconds_per_frame": per_step * int(c.tau) * int(c.iterations) / batch,
            "warmup_seconds": warm, "peak_memory_gb": peak}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"


def results_block(rows: list[dict], cfg, device: torch.device, steps: int, variants: int | None = None) -> str:
    h, w = cfg.data.image_size
    c = cfg.cf
    base = rows[0]["seconds_per_frame"]
    so_far = f" ({len(rows)} of {variants} variants so far)" if variants is not None and len(rows) < variants else ""
    lines = [BEGIN, f"### The paper's setting on {device_name(device)} — `bench/gpu_paper.sh`{so_far}", "",
             f"{datetime.date.today().isoformat()}, torch {torch.__version__}: Diff-ICE at {h}x{w}, τ = {c.tau} of "
             f"{c.respacing}, L = {c.iterations}, batch {c.batch_size}, perceptual network `{cfg.features.perceptual}`, "
             f"random weights; {steps} guided steps timed per variant after a warm-up, scaled to τ × L steps per frame "
             f"(paper, RTX A6000: {PAPER_SECONDS_PER_FRAME} s/frame). fp32 rows with TF32 off.",
             "", "| precision | torch.compile | TF32 | s / frame | vs fp32 | s / guided step (batch) | peak memory (GB) | warm-up (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = "–" if r["peak_memory_gb"] is None else f"{r['peak_memory_gb']:.1f}"
        lines.append(f"| {r['precision']} | {'yes' if r['compile'] else 'no'} | {'on' if r['tf32'] else 'off'} | "
                     f"{r['seconds_per_frame']:.2f} | {base / r['seconds_per_frame']:.2f}x | {r['seconds_per_step']:.3f} | "
                     f"{mem} | {r['warmup_seconds']:.1f} |")
    lines.append(END)
    return "\n".join(lines)


def append_row(path: Path, row: dict) -> None:
    """One JSON line, flushed to the disk before the next variant starts."""
    with path.open("a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


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
    p.add_argument("--rows", default=None, help="each variant's row appended here (JSON lines) as soon as it is measured")
    ns = p.parse_args(argv)
    if ns.device.startswith("cuda") and not torch.cuda.is_available():
        seen = gpu_present()
        if seen is not None:
            print(f"gpu_paper: a GPU is present ({seen}) but torch {torch.__version__} cannot use it "
                  f"({cuda_problem()}); nothing measured", file=sys.stderr)
            return 2
        print("gpu_paper: no CUDA GPU on this machine; nothing measured (run bench/gpu_paper.sh on one)")
        return 0
    device = torch.device(ns.device)
    rows_path = Path(ns.rows) if ns.rows else None
    if rows_path is not None:
        rows_path.parent.mkdir(parents=True, exist_ok=True)
        rows_path.write_text("")
    torch.manual_seed(0)
    cfg, diffusion, model, guide, perceptual = build(device, ns.shrink)
    variants = [(compile_, precision) for compile_ in ((False,) if ns.no_compile else (False, True))
                for precision in ("none", "bf16")]
    rows = []
    for compile_, precision in variants:
        r = measure(cfg, diffusion, model, guide, perceptual, device, precision, compile_, ns.steps)
        r["precision"] = "fp32" if precision == "none" else "bf16"
        r["device"] = device_name(device)
        rows.append(r)
        print(f"{r['precision']:>4} compile={str(compile_):5} {r['seconds_per_frame']:.2f} s/frame "
              f"(step {r['seconds_per_step']:.3f} s, warm-up {r['warmup_seconds']:.1f} s)", flush=True)
        if rows_path is not None:
            append_row(rows_path, r)
        write_results(Path(ns.results), results_block(rows, cfg, device, ns.steps, len(variants)))
    print(f"written: {ns.results}" + (f", {rows_path}" if rows_path is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
