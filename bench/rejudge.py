"""Layout Dice of finished synthesis runs under another judge (issue 25), without sampling again.

Every layout of a run folder (``layouts/<index>/``) keeps its class layout (``layout_classes.png``),
its real frame (``real.png``) and its samples (``sample_<j>.png``). This segments them with JUDGE
(a segmenter, guide or oracle checkpoint) and prints, per structure, the mean layout Dice of the
samples and of the real frames (the judge's ceiling) with bootstrap 95 % intervals, computed as the
runs compute it (``synthesis.run.layout_dice``). 1 torch thread.

    .venv/bin/python bench/rejudge.py JUDGE.ckpt RUN_DIR [RUN_DIR ...]
"""
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffice.metrics.stats import fmt_interval, mean_interval
from diffice.synthesis.metrics import load_segment
from diffice.synthesis.run import layout_dice

torch.set_num_threads(1)


def frame(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 127.5 - 1.0)[None]


judge, classes, kind = load_segment(sys.argv[1])
print(f"judge {sys.argv[1]} ({kind})")
for run in sys.argv[2:]:
    samples, reals = [], []
    for d in sorted(p for p in (Path(run) / "layouts").iterdir() if p.is_dir()):
        lay = torch.from_numpy(np.asarray(Image.open(d / "layout_classes.png"), dtype=np.int64))
        files = sorted(d.glob("sample_*.png"))
        x = torch.stack([frame(f) for f in files])
        samples += layout_dice(judge(x), lay[None].expand(len(files), -1, -1), classes)
        if (d / "real.png").is_file():
            reals += layout_dice(judge(frame(d / "real.png")[None]), lay[None], classes)
    cells = []
    for c in classes[1:]:
        s = [r[c] for r in samples if r.get(c) is not None]
        r = [v[c] for v in reals if v.get(c) is not None]
        if s:
            cells.append(f"{c}: samples {fmt_interval(mean_interval(s))} (n {len(s)}), real {fmt_interval(mean_interval(r))} (n {len(r)})")
    print(f"{run}\n  " + "\n  ".join(cells))
