"""What does the guide ask for when only a smooth gain may change? (issue 35)

For the faulted input frames of a counterfactual run (``RUN/frames/*/input.png`` with their clean twins
``target.png``; the fault kind from ``results.csv``), this fits, frame by frame, a smooth multiplicative gain
field (a ``--grid`` of log-gains, bilinearly upsampled; the echo amplitude (x + 1) / 2 is multiplied by its
exponential) that makes the guide call the frame SP: ``--steps`` Adam steps on BCE(f(x'), SP) + ``--reg`` ·
mean(log-gain²). No diffusion. Acquisition faults of the gain and shadow kinds are such fields (a shadow is a
local attenuation), so if the guide's evidence followed the faults, its field would brighten the shadowed
wedge and undo a gain error. Printed: frames the guide calls SP, and frames closer to the clean twin over the
whole imaged sector and inside the fault's footprint (the real-frame judges, ``metrics/target.py``), overall
and per fault kind. 1 torch thread, CPU, a few minutes per setting for 32 frames.

    OMP_NUM_THREADS=1 .venv/bin/python bench/guide_gain_field.py RUN [--guide models/hc18/guide.ckpt] [--reg 100]
"""
import argparse
import csv
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from diffice.metrics.target import sector_l1, target_l1
from diffice.modules.common import load_checkpoint
from diffice.nets.guide import decision_threshold
from diffice.report.records import grey_tensor

torch.set_num_threads(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path, help="a counterfactual run folder of faulted frames (frames/*/input.png, target.png)")
    ap.add_argument("--guide", default="models/hc18/guide.ckpt")
    ap.add_argument("--grid", type=int, nargs=2, default=[8, 10], help="log-gain grid (rows, columns)")
    ap.add_argument("--reg", type=float, nargs="+", default=[10.0, 100.0], help="weight of mean(log-gain²), each in turn")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=0.05)
    a = ap.parse_args()
    guide = load_checkpoint(a.guide, "classifier").guide.eval().requires_grad_(False)
    thr = decision_threshold(guide)
    kinds = {int(r["index"]): re.sub(r"^.*_", "", r["id"]) for r in csv.DictReader(open(a.run / "results.csv"))}
    dirs = sorted(p for p in (a.run / "frames").iterdir() if (p / "target.png").is_file())
    kind = [kinds[int(p.name)] for p in dirs]
    x = torch.stack([grey_tensor(p / "input.png") for p in dirs])
    target = torch.stack([grey_tensor(p / "target.png") for p in dirs])
    amp = (x + 1) / 2
    with torch.no_grad():
        before = int((torch.sigmoid(guide(x).reshape(-1)) > thr).sum())
    print(f"{len(dirs)} faulted frames of {a.run}; guide {a.guide} calls {before} SP; grid {a.grid[0]}x{a.grid[1]}, "
          f"{a.steps} Adam steps at lr {a.lr}\n")
    print("| reg | called SP | closer to the clean twin: whole frame | inside the footprint | whole frame per fault | max abs log-gain |")
    print("|---|---|---|---|---|---|")
    for reg in a.reg:
        g = torch.zeros(len(dirs), 1, *a.grid, requires_grad=True)
        opt = torch.optim.Adam([g], lr=a.lr)

        def apply(g):
            field = F.interpolate(g, size=x.shape[-2:], mode="bilinear", align_corners=False).exp()
            return (amp * field).clamp(0, 1) * 2 - 1

        for _ in range(a.steps):
            logit = guide(apply(g)).reshape(-1)
            loss = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit), reduction="sum")
            loss = loss + reg * (g**2).mean(dim=(1, 2, 3)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            xp = apply(g)
            called = int((torch.sigmoid(guide(xp).reshape(-1)) > thr).sum())
        whole = sector_l1(xp, target) < sector_l1(x, target)
        base = target_l1(x, target)
        inside = (target_l1(xp, target, reference=x) < base)[~torch.isnan(base)]
        per = ", ".join(f"{k} {sum(int(w) for w, kk in zip(whole, kind) if kk == k)}/{kind.count(k)}" for k in sorted(set(kind)))
        print(f"| {reg:g} | {called}/{len(dirs)} | {int(whole.sum())}/{len(dirs)} | {int(inside.sum())}/{len(inside)} | {per} | "
              f"{float(g.detach().abs().max()):.2f} |")


if __name__ == "__main__":
    main()
