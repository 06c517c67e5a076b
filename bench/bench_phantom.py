"""Phantom speed: frames per second at 224x288 on one core, single process.

A "frame" is everything a training item needs: image, mask, concepts, label and the
ground-truth target. Also timed: the image alone (no target), and the DataModule item
(frame + transforms + tensors). Run:  .venv/bin/python bench/bench_phantom.py [--frames N]
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
    fn(0)  # warm the caches (geometry, speckle bank)
    t, c = time.perf_counter(), time.process_time()
    for i in range(1, n + 1):
        fn(i)
    return n / (time.perf_counter() - t), n / (time.process_time() - c)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, default=400)
    p.add_argument("--size", type=int, nargs=2, default=[224, 288], metavar=("H", "W"))
    ns = p.parse_args()
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
