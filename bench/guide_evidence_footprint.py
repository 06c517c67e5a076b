"""Where does the guide see each fault? Its evidence map against the fault's footprint.

The guide's SP logit is the mean of its class-map cells (``Guide.evidence``; 8x10 cells at 128x160). For
every faulted test frame of hc18-faults with a clean twin, the footprint (``metrics.target.footprint``:
low-passed |frame - twin| > 0.1, as the footprint judge uses) is pooled onto the cells: "inside" are the cells
it covers by at least a quarter, "outside" the cells it does not touch. Printed per fault kind: the frames
whose footprint has cells of both kinds, the median cells inside, and the mean cell logit inside minus
outside with a 95 % bootstrap interval over frames (below 0: the guide's non-standard evidence lies in the
fault), and the share of frames where that gap is below -1. 1 torch thread.

    .venv/bin/python bench/guide_evidence_footprint.py models/hc18/guide.ckpt [--split test]
"""
import argparse
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from diffice.config import load_config
from diffice.data import DiffIceDataModule
from diffice.metrics.stats import mean_interval
from diffice.metrics.target import footprint
from diffice.modules.common import load_checkpoint

torch.set_num_threads(1)
ap = argparse.ArgumentParser()
ap.add_argument("guide")
ap.add_argument("--preset", default="configs/preset/hc18.yaml")
ap.add_argument("--split", default="test")
args = ap.parse_args()

cfg = load_config([args.preset], ["data.augment=false"])
dm = DiffIceDataModule(cfg)
dm.setup()
ds = dm.dataset(args.split)
guide = load_checkpoint(args.guide, "classifier").guide.eval()
gaps, inside_cells, untouched = defaultdict(list), defaultdict(list), defaultdict(int)
items = [ds[i] for i in range(len(ds))]
faulted = [it for it in items if bool(it["has_target"]) and int(it["label"]) == 0]
for k in range(0, len(faulted), 16):
    chunk = faulted[k:k + 16]
    x, target = torch.stack([it["image"] for it in chunk]), torch.stack([it["target"] for it in chunk])
    with torch.no_grad():
        cells = guide.predictor.class_maps(guide.predictor_input(x)).float()
    share = F.adaptive_avg_pool2d(footprint(x, target).float(), cells.shape[-2:])
    for j, it in enumerate(chunk):
        kind = it["id"].rsplit("_", 1)[-1]
        inside, outside = share[j] >= 0.25, share[j] == 0
        if not (inside.any() and outside.any()):
            untouched[kind] += 1
            continue
        inside_cells[kind].append(int(inside.sum()))
        gaps[kind].append(float(cells[j][inside].mean() - cells[j][outside].mean()))
print(f"{args.guide}, {args.split} split, {len(faulted)} faulted frames, {cells.shape[-2]}x{cells.shape[-1]} cells")
print("| fault | frames with cells inside and outside | without | median cells inside | gap inside - outside [95 %] | gap < -1 |")
print("|---|---|---|---|---|---|")
for kind in sorted(set(gaps) | set(untouched)):
    g = np.array(gaps[kind])
    if len(g):
        iv = mean_interval(g)
        print(f"| {kind} | {len(g)} | {untouched[kind]} | {np.median(inside_cells[kind]):.0f} | {iv['value']:+.2f} [{iv['low']:+.2f}, {iv['high']:+.2f}] | {int((g < -1).sum())} of {len(g)} |")
    else:
        print(f"| {kind} | 0 | {untouched[kind]} | | | |")
