"""How small a change convinces the guide? An L2 attack on its SP logit (issue 35).

Guidance climbs the guide's gradient. If a change far smaller than any fault turns a faulted frame into one
the guide calls SP, guidance finds such a change long before it finds a repair. For the faulted input frames
of a counterfactual run (``RUN/frames/*/input.png``, every ``--every``-th, at most ``--count``), this runs
``--steps`` steps of projected, normalised gradient ascent on the guide's SP logit within an L2 ball of RMS
``eps`` per pixel ([-1, 1] units; 0.005 is 0.6 grey levels), for each ``--eps``, and counts the frames the
guide then calls SP (at its calibrated threshold). 1 torch thread, CPU, about a minute per guide.

    OMP_NUM_THREADS=1 .venv/bin/python bench/guide_attack.py RUN GUIDE.ckpt [GUIDE.ckpt ...]
"""
import argparse
import math
from pathlib import Path

import torch

from diffice.metrics.stats import fmt_rate, rate_interval
from diffice.modules.classifier import l2_ascent
from diffice.modules.common import load_checkpoint
from diffice.nets.guide import decision_threshold
from diffice.report.records import grey_tensor

torch.set_num_threads(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path, help="a counterfactual run folder (frames/*/input.png)")
    ap.add_argument("guides", nargs="+")
    ap.add_argument("--eps", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.04])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--every", type=int, default=3)
    ap.add_argument("--count", type=int, default=32)
    a = ap.parse_args()
    dirs = sorted(p for p in (a.run / "frames").iterdir() if (p / "input.png").is_file())[::a.every][:a.count]
    x = torch.stack([grey_tensor(p / "input.png") for p in dirs])
    print(f"{len(dirs)} input frames of {a.run} (every {a.every}); {a.steps} steps of L2 ascent on the SP logit\n")
    print("| guide | called SP before | " + " | ".join(f"after RMS {e:g}" for e in a.eps) + " | median logit before → after the largest |")
    print("|---" * (len(a.eps) + 3) + "|")
    for path in a.guides:
        guide = load_checkpoint(path, "classifier").guide.float().eval()
        p = decision_threshold(guide)
        cut = math.log(p / (1 - p))
        with torch.no_grad():
            before = guide(x).float()
        cells, after = [], before
        for e in a.eps:
            adv = l2_ascent(lambda v, g=guide: g(v).float().sum(), x, e * math.sqrt(x[0, 0].numel()), a.steps)
            with torch.no_grad():
                after = guide(adv).float()
            cells.append(fmt_rate(rate_interval(int((after > cut).sum()), len(x))))
        print(f"| {path} | {int((before > cut).sum())} / {len(x)} | " + " | ".join(cells)
              + f" | {float(before.median()):+.2f} → {float(after.median()):+.2f} |")


if __name__ == "__main__":
    main()
