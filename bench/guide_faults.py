"""Does the guide see each fault of hc18-faults, on the frames and on the DDPM's one-step estimates?

For each guide checkpoint: on the test split (fetuses unseen), the share of each fault kind's frames it
calls NSP and of the clean frames it calls SP (at its own decision threshold; 95 % Clopper–Pearson),
balanced accuracy and AUROC; then the same on x̂0|t, the DDPM's one-step estimates of every test frame
at t = the last respaced step of cf.tau (what guidance differentiates at the start of each pass; per-frame
noise seeded by the frame's index). 1 torch thread.

    .venv/bin/python bench/guide_faults.py runs/hc18v2/classifier/last.ckpt [--ddpm models/hc18/ddpm.ckpt] [--no-x0]
"""
import argparse
import csv
from collections import defaultdict
from pathlib import Path

import torch

from diffice.config import load_config
from diffice.data import DiffIceDataModule
from diffice.diffusion import generators_for, randn
from diffice.metrics.stats import clopper_pearson
from diffice.modules.classifier import binary_report
from diffice.modules.common import load_checkpoint
from diffice.modules.ddpm import load_ddpm
from diffice.nets.guide import decision_threshold

torch.set_num_threads(1)
ap = argparse.ArgumentParser()
ap.add_argument("guides", nargs="+")
ap.add_argument("--preset", default="configs/preset/hc18.yaml")
ap.add_argument("--ddpm", default="models/hc18/ddpm.ckpt")
ap.add_argument("--no-x0", action="store_true")
ap.add_argument("--split", default="test")
args = ap.parse_args()

cfg = load_config([args.preset], ["data.augment=false"])
dm = DiffIceDataModule(cfg)
dm.setup()
ds = dm.dataset(args.split)
manifest = Path(cfg.data.manifest)
fault_of = {r["id"]: (r["fault"] or "clean") for r in csv.DictReader(open(manifest, newline=""))}
items = [ds[i] for i in range(len(ds))]
x = torch.stack([it["image"] for it in items])
y = torch.stack([it["label"] for it in items])
kinds = [fault_of[str(it["id"])] for it in items]
index = [int(it["index"]) for it in items]

frames = {"frames": x}
if not args.no_x0:
    ddpm = load_ddpm(args.ddpm, cfg)
    diffusion = ddpm.sampler(str(cfg.cf.respacing))
    tau = int(cfg.cf.tau)
    est = []
    with torch.no_grad():
        for s in range(0, len(x), 16):
            xb, ib = x[s:s + 16], index[s:s + 16]
            t = torch.full((len(xb),), tau - 1, dtype=torch.long)
            noise = randn(xb.shape, generators_for(int(cfg.seed) + 7, ib), xb.device)
            xt = diffusion.q_sample(xb, t, noise)
            est.append(diffusion.p_mean_variance(ddpm.ema_model, xt, t, clip_denoised=True)["pred_xstart"].float())
    frames[f"x0 estimates at tau {tau} ({Path(args.ddpm).name})"] = torch.cat(est)

probs: dict[str, dict[str, torch.Tensor]] = {}
for path in args.guides:
    guide = load_checkpoint(path, "classifier").guide.eval()
    thr = decision_threshold(guide)
    print(f"\n{path}  (threshold {thr:.3f}, {args.split} split, {len(x)} frames)")
    for name, xs in frames.items():
        with torch.no_grad():
            p = torch.cat([torch.sigmoid(guide(xs[s:s + 32]).float()) for s in range(0, len(xs), 32)])
        rep = binary_report(p, y, thr)
        probs.setdefault(name, {})[path] = (p, thr)
        calls = defaultdict(list)
        for k, pi in zip(kinds, p.tolist()):
            calls[k].append(pi > thr if k == "clean" else pi <= thr)
        cells = []
        for k in sorted(calls):
            n, hit = len(calls[k]), sum(calls[k])
            ci = clopper_pearson(hit, n)
            what = "called SP" if k == "clean" else "called NSP"
            cells.append(f"{k:>13} {what}: {hit}/{n} = {hit / n:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]")
        print(f"  {name}: balanced accuracy {rep['balanced_accuracy']:.3f}, AUROC {rep['auroc']:.3f}")
        print("    " + "\n    ".join(cells))


def _paired(a, b, ya, n_boot: int = 2000) -> str:
    """B − A of AUROC and of balanced accuracy (each at its own threshold), 95 % paired bootstrap over frames."""
    import numpy as np

    from diffice.metrics.classification import auroc, balanced_accuracy

    (pa, ta), (pb, tb) = a, b
    pa, pb, yy = pa.numpy(), pb.numpy(), ya.numpy().astype(int)
    rng = np.random.default_rng(0)
    out = []
    for name, fn in (("AUROC", lambda p, t, i: auroc(p[i], yy[i])),
                     ("balanced accuracy", lambda p, t, i: balanced_accuracy(yy[i], (p[i] > t).astype(int)))):
        full = np.arange(len(yy))
        d0 = fn(pb, tb, full) - fn(pa, ta, full)
        ds = [fn(pb, tb, i) - fn(pa, ta, i) for i in (rng.integers(0, len(yy), len(yy)) for _ in range(n_boot))]
        lo, hi = np.nanpercentile(ds, [2.5, 97.5])
        out.append(f"{name} {d0:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    return ", ".join(out)


if len(args.guides) >= 2:
    first = args.guides[0]
    for name, by in probs.items():
        for path in args.guides[1:]:
            print(f"\n{name}: {path} − {first} (N = {len(y)}, 2000 paired bootstrap resamples): "
                  + _paired(by[first], by[path], y))
