"""How well does a layout judge segment the *real* frames (issue 25)? The ceiling of every layout
Dice a synthesis run reports: a sample can only be judged as well as the judge segments real frames.

For each checkpoint (segmenter, guide or oracle; ``diffice.synthesis.metrics.load_segment``) the
per-structure Dice of its segmentation of every test frame of the synthesis experiments' phantom
(``data.phantom.seed 1``, 1,600 frames: patients no model saw) against the frame's own mask, as the
synthesis runs compute it (``synthesis.run.layout_dice``: structures the mask holds), with a
bootstrap 95 % interval; all frames and the standard planes alone. 1 torch thread.

    .venv/bin/python bench/judge_ceiling.py models/demo/guide.ckpt runs/issue25-judge/segmenter/last.ckpt
"""
import sys

import numpy as np
import torch

from diffice.config import load_config
from diffice.data import DiffIceDataModule
from diffice.metrics.stats import fmt_interval, mean_interval
from diffice.synthesis.metrics import load_segment
from diffice.synthesis.run import layout_dice

torch.set_num_threads(1)
cfg = load_config(["configs/preset/demo.yaml"], ["data.phantom.count=1600", "data.phantom.seed=1"])
dm = DiffIceDataModule(cfg)
dm.setup()
ds = dm.dataset("test")
items = [ds[i] for i in range(len(ds))]
items = [it for it in items if bool(it["has_mask"]) and (it["mask"] >= 1).any()]
x = torch.stack([it["image"] for it in items])
masks = torch.stack([it["mask"].long() for it in items])
sp = np.array([int(it["label"]) == 1 for it in items])
print(f"{len(items)} test frames with a mask ({int(sp.sum())} standard planes), {tuple(x.shape[-2:])}")
for path in sys.argv[1:]:
    segment, classes, kind = load_segment(path)
    pred = torch.cat([segment(x[i:i + 64]) for i in range(0, len(x), 64)])
    dice = layout_dice(pred, masks, classes)
    cells = []
    for c in classes[1:]:
        for name, keep in (("all", np.ones(len(items), bool)), ("SP", sp)):
            v = [d[c] for d, k in zip(dice, keep) if k and d.get(c) is not None]
            cells.append(f"{c} {name} {fmt_interval(mean_interval(v))} (n {len(v)})")
    print(f"{path} ({kind}):\n  " + "\n  ".join(cells))
