"""Phantom speed: frames per second at 224x288 on one core, single process.

A "frame" is everything a training item needs: image, mask, concepts, label and the
ground-truth target. Also timed: the image alone (no target), and the DataModule item
(frame + transforms + tensors). Run:  .venv/bin/python bench/bench_phantom.py [--frames N]

``--separability``: instead, train a small CNN (4 conv + BatchNorm blocks, global max pool)
from scratch on 1280 balanced phantom frames at 64x80 (patient-level 80/20 split) and print
its test accuracy per epoch and per fault kind (minutes on a CPU).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

from diffice.data import phantom as ph  # noqa: E402


def rate(fn, n: int) -> tuple[float, float]:
    """(frames per wall second, frames per CPU second of this process). On a shared, loaded
    machine the CPU-time rate is the fair one-core number; on an idle machine they agree."""
    for i in range(4 * len(ph.FOVS)):  # warm the caches (one geometry per field of view, the speckle bank)
        fn(i)
    t, c = time.perf_counter(), time.process_time()
    for i in range(1, n + 1):
        fn(i)
    return n / (time.perf_counter() - t), n / (time.process_time() - c)


def separability(epochs: int = 8, count: int = 1600) -> None:
    """Is SP vs NSP learnable at 64x80 by a small classifier? Accuracy per fault kind."""
    from collections import defaultdict

    import numpy as np
    from torch import nn

    torch.manual_seed(0)
    frames = [ph.render_frame(i, (64, 80), seed=0, sp_fraction=0.5) for i in range(count)]
    x = torch.from_numpy(np.stack([f["image"] for f in frames])).float()[:, None] / 127.5 - 1
    y = torch.tensor([f["label"] for f in frames]).float()
    kind = ["+".join(f["faults"]) or "SP" for f in frames]
    test = torch.tensor([f["patient"] % 5 == 0 for f in frames])

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

    net = nn.Sequential(*block(1, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 64),
                        nn.MaxPool2d(2), *block(64, 64), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(64, 1))
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    xtr, ytr = x[~test], y[~test]
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 32):
            idx = perm[i : i + 32]
            xb = xtr[idx].flip(-1) if torch.rand(()) < 0.5 else xtr[idx]
            loss = nn.functional.binary_cross_entropy_with_logits(net(xb).squeeze(1), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            pred = (net(x[test]).squeeze(1) > 0).float()
        per = defaultdict(list)
        for k, ok in zip([k for k, t in zip(kind, test.tolist()) if t], (pred == y[test]).tolist()):
            per[k].append(ok)
        acc = (pred == y[test]).float().mean().item()
        detail = ", ".join(f"{k} {np.mean(v):.2f} (n={len(v)})" for k, v in sorted(per.items()) if len(v) >= 5)
        print(f"epoch {ep + 1}: test accuracy {acc:.3f}; {detail}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, default=400)
    p.add_argument("--size", type=int, nargs=2, default=[224, 288], metavar=("H", "W"))
    p.add_argument("--separability", action="store_true", help="train a small CNN at 64x80 instead")
    p.add_argument("--epochs", type=int, default=8)
    ns = p.parse_args()
    if ns.separability:
        torch.set_num_threads(2)
        separability(ns.epochs)
        return
    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)
    size = tuple(ns.size)
    full = rate(lambda i: ph.render_frame(i, size), ns.frames)
    image_only = rate(lambda i: ph.render_frame(i, size, with_target=False), ns.frames)

    from diffice.config import load_config
    from diffice.data import DiffIceDataModule

    cfg = load_config([], [f"data.image_size=[{size[0]},{size[1]}]", f"data.phantom.count={ns.frames + 1}"])
    ds = DiffIceDataModule(cfg).dataset("all", augment=True)
    item = rate(lambda i: ds[i], min(ns.frames, len(ds) - 1))
    print(f"phantom {size[0]}x{size[1]}, 1 thread, {ns.frames} frames   (wall clock | CPU time of this process)")
    print(f"  frame with target and mask: {full[0]:7.1f} | {full[1]:7.1f} frames/s")
    print(f"  image and mask only:        {image_only[0]:7.1f} | {image_only[1]:7.1f} frames/s")
    print(f"  DataModule item (augment):  {item[0]:7.1f} | {item[1]:7.1f} items/s")


if __name__ == "__main__":
    main()
