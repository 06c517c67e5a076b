"""What one training of the head-measurement study costs: a few steps of its own loop, extrapolated.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/seg_downstream_cost.py [--steps 5] \\
        [--size 128 160] [--batch 16] [--total 600] [--test 209] [--device cpu]

The hc18 preset's segmenter (``configs/preset/hc18.yaml``: U-Net on tu-resnet10t) is trained by the
study's :func:`~diffice.downstream.seg_train.train_segmenter` (with the ``data.augment`` transforms)
on random frames of elliptic heads at ``--size``; the first step is a warm-up and is not counted.
Prints the median wall time of a step and the process's CPU time per step (on a shared machine the
CPU time is what one idle thread would take), the seconds to predict ``--test`` frames, and both
extrapolated to ``--total`` steps (one training) and to the study's 18 trainings. Torch threads:
``OMP_NUM_THREADS`` (one by default here).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def frames(n: int, size: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    images, masks = [], []
    for _ in range(n):
        cy, cx = size[0] * rng.uniform(0.4, 0.6), size[1] * rng.uniform(0.4, 0.6)
        m = (((yy - cy) / (size[0] * rng.uniform(0.2, 0.35))) ** 2 + ((xx - cx) / (size[1] * rng.uniform(0.2, 0.35))) ** 2) <= 1
        images.append(np.clip(40 + 120 * m + rng.normal(0, 20, size), 0, 255).astype(np.uint8))
        masks.append(m.astype(np.int16))
    return np.stack(images), np.stack(masks)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    p.add_argument("--size", type=int, nargs=2, default=[128, 160])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--total", type=int, default=600, help="steps of one training, to extrapolate to")
    p.add_argument("--test", type=int, default=209, help="test frames predicted after each training")
    p.add_argument("--device", default="cpu")
    ns = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    sys.path.insert(0, str(ROOT / "src"))
    from diffice.config import load_config
    from diffice.downstream.seg_train import predict_masks, train_segmenter

    cfg = load_config([ROOT / "configs/preset/hc18.yaml"], ["wandb.mode=disabled"])
    size = (int(ns.size[0]), int(ns.size[1]))
    images, masks = frames(64, size)
    marks: list[tuple[float, float]] = []

    def on_step(k: int) -> None:
        marks.append((time.perf_counter(), time.process_time()))

    start = (time.perf_counter(), time.process_time())
    net = train_segmenter(cfg, 2, images, masks, steps=ns.steps + 1, batch_size=ns.batch, lr=1e-3, seed=0,
                          device=ns.device, on_step=on_step)
    walls = np.diff([m[0] for m in [start, *marks]])[1:]
    cpu = (marks[-1][1] - marks[0][1]) / ns.steps
    test, _ = frames(ns.test, size, seed=1)
    t0 = time.perf_counter()
    predict_masks(net, test)
    predict = time.perf_counter() - t0
    one = np.median(walls) * ns.total + predict
    print(f"segmenter {cfg.segmenter.encoder} at {size[0]}x{size[1]}, batch {ns.batch}, {torch.get_num_threads()} thread(s), "
          f"{ns.device}, load average {os.getloadavg()[0]:.1f}: a step {np.median(walls):.2f} s wall (median of {ns.steps}; "
          f"{', '.join(f'{w:.1f}' for w in walls)}), {cpu:.2f} s CPU; predicting {ns.test} frames {predict:.1f} s")
    print(f"extrapolated: one training of {ns.total} steps ~{one / 60:.0f} min wall ({cpu * ns.total / 60:.0f} CPU-min); "
          f"the study's 18 trainings ~{18 * one / 3600:.1f} h wall ({18 * cpu * ns.total / 3600:.1f} CPU-h)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
