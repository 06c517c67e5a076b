"""Does the guide's gradient point at the repair? Why Diff-ICE and its λc = 0 control end up alike.

For every frame of a counterfactual run on frames with a known clean twin (hc18-faults) and of its
λc = 0 control (same frames, same procedure), from the frame folders' PNGs:
- cos(∇x logit f(x), target − x): the guide's raw pixel gradient at the faulted input against the
  direction that repairs it, and the same after a Gaussian low-pass of the gradient (σ px);
- cos(x_c − x_c⁰, target − x_c⁰): does what guidance added on top of the control's resampling point at
  the clean twin;
- the guide's SP probability along the straight path input → target (0, ½, 1): it sees the fault.
Means per fault kind (the frame id's last word) with seeded 95 % bootstrap intervals. A random direction
in a 128x160 frame has |cos| ≈ 0.006. 1 torch thread.

    .venv/bin/python bench/guide_alignment.py RUN_DIR CONTROL_DIR [--guide CKPT]
"""
import argparse
import collections
from pathlib import Path

import numpy as np
import torch

from diffice.metrics.stats import fmt_interval, mean_interval
from diffice.metrics.target import low_pass
from diffice.modules.common import load_checkpoint
from diffice.report.records import grey_tensor, load_records

torch.set_num_threads(1)
ap = argparse.ArgumentParser()
ap.add_argument("run")
ap.add_argument("control")
ap.add_argument("--guide", default=None, help="guide checkpoint (default: the run's cf.guide_ckpt)")
ap.add_argument("--sigmas", type=float, nargs="*", default=[2.0, 8.0])
args = ap.parse_args()

run, control = Path(args.run), Path(args.control)
ckpt = args.guide
if ckpt is None:
    from omegaconf import OmegaConf
    ckpt = OmegaConf.load(run / "config.yaml").cf.guide_ckpt
guide = load_checkpoint(ckpt, "classifier").guide.eval()


def frame(path: Path) -> torch.Tensor:
    return grey_tensor(path)[None]


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-12))


cols = ["cos(grad, target - x)", *[f"cos(G{s:g} * grad, target - x)" for s in args.sigmas],
        "cos(cf - control, target - control)", "p(x)", "p(midway)", "p(target)"]
rows = collections.defaultdict(list)
for rec in load_records(run):
    d = rec["_dir"]
    if not (d / "target.png").is_file():
        continue
    x, t, cf = frame(d / "input.png"), frame(d / "target.png"), frame(d / "cf.png")
    c0 = frame(control / "frames" / d.name / "cf.png")
    kind = str(rec["id"]).split("_")[-1]
    xx = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(guide(xx).sum(), xx)
    with torch.no_grad():
        p = [float(torch.sigmoid(guide(x + a * (t - x)))) for a in (0.0, 0.5, 1.0)]
    vals = [cos(g, t - x), *[cos(low_pass(g, s), t - x) for s in args.sigmas], cos(cf - c0, t - c0), *p]
    rows[kind].append(vals)
    rows["all"].append(vals)

print(f"{run} vs {control}; guide {ckpt}")
print("| fault | n | " + " | ".join(cols) + " |")
print("|---|---|" + "---|" * len(cols))
for kind in sorted(rows, key=lambda k: (k == "all", k)):
    a = np.asarray(rows[kind])
    cells = [fmt_interval(mean_interval(a[:, j]), 3) for j in range(a.shape[1])]
    print(f"| {kind} | {len(a)} | " + " | ".join(cells) + " |")
