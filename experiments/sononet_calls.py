"""How often the official SonoNet-16 calls a manifest's frames a brain plane, clean vs faulted.

    .venv/bin/python experiments/sononet_calls.py data/hc18-faults/manifest.csv --size 128 160 [--split test]

A frame is read, resized to the working size (what a model at that size sees), then prepared as
the authors' release does (no crop: HC18 frames carry no vendor text) and classified; "brain
plane" = Brain (Cb.) or Brain (Tv.) is the argmax. Per fault: the rate on the faulted frames with
its 95 % Clopper–Pearson interval, the clean twins' rate, and the exact McNemar p of the pairs.
Needs ../shared/data/sononet/SonoNet16.npz (or --weights).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffice.metrics.stats import fmt_interval, mcnemar, rate_interval
from diffice.nets.sononet import OFFICIAL_CLASSES, SonoNet, preprocess_official


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manifest")
    p.add_argument("--size", nargs=2, type=int, default=[128, 160], metavar=("H", "W"))
    p.add_argument("--split", default="test")
    p.add_argument("--weights", default=str(Path(__file__).resolve().parents[2] / "shared/data/sononet/SonoNet16.npz"))
    ns = p.parse_args()
    net = SonoNet.from_official(ns.weights).eval()
    brain = {OFFICIAL_CLASSES.index("Brain (Cb.)"), OFFICIAL_CLASSES.index("Brain (Tv.)")}
    base = Path(ns.manifest).parent
    rows = [r for r in csv.DictReader(open(ns.manifest)) if r.get("split") == ns.split]
    h, w = ns.size

    def call(path: str) -> bool:
        a = np.asarray(Image.open(base / path).convert("L"))
        a = np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR))
        with torch.no_grad():
            return int(net(preprocess_official(a, None)[None]).argmax(1)) in brain

    clean = {r["source"]: call(r["image"]) for r in rows if r["label"] == "SP"}
    by = defaultdict(list)
    for r in rows:
        if r["label"] == "NSP":
            by[r["fault"]].append((clean[r["source"]], call(r["image"])))
    print(f"{ns.manifest}, {ns.split} split, frames resized to {h}x{w}")
    print(f"clean: {fmt_interval(rate_interval(sum(clean.values()), len(clean)), 2)} (n = {len(clean)})")
    everything = []
    for fault, pairs in sorted(by.items()):
        c, f = [a for a, _ in pairs], [b for _, b in pairs]
        everything += f
        print(f"{fault:14s} n = {len(pairs):3d}  clean twins {sum(c) / len(c):.2f}  faulted "
              f"{fmt_interval(rate_interval(sum(f), len(f)), 2)}  McNemar p = {mcnemar(c, f)['p_value']:.2g}")
    print(f"all faulted: {fmt_interval(rate_interval(sum(everything), len(everything)), 2)} (n = {len(everything)}); "
          f"not called a brain plane: {len(everything) - sum(everything)}")


if __name__ == "__main__":
    main()
