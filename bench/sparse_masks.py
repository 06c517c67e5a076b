"""Which mask finds the fault? Candidate sparse-refinement masks against the phantom's footprint (issue 23).

For the frames of a finished dense run (``DENSE``: input.png, cf.png, target.png per frame) and of
its λc = 0 control with the same iterations (``CONTROL``), this builds each candidate mask a method
could compute, without the target, and compares it with the fault's footprint (the project's own:
``metrics.locality.footprint``). Per mask: its area, the share of the footprint it covers (recall),
the share of it inside the footprint (precision), and the whole-frame closeness (``sector_l1``,
σ = 3 px at 64x80) of the dense counterfactual pasted into the input inside the mask — the
issue's calibration: what a refinement that reproduced the dense repair inside the mask would give.

    .venv/bin/python bench/sparse_masks.py DENSE CONTROL [--guide models/demo/guide.ckpt]

Candidates: ``diff`` (low-passed |x_c − x|, the shipped ``cf.sparse=diff``), ``contrast`` (low-passed
|x_c − x_control|: what the guidance changed beyond what the noise alone redraws, DiffEdit's idea),
``grad`` (low-passed |∇_x logit f(x)| of the guide at the input, its top share of the frame), and
the true footprint as the ceiling. 1 torch thread.
"""
import argparse
from pathlib import Path

import torch

from diffice.counterfactual.sparse import opened
from diffice.metrics.locality import footprint
from diffice.metrics.stats import fmt_interval, fmt_rate, mean_interval, rate_interval
from diffice.metrics.target import grow, low_pass, sector_l1
from diffice.report.records import grey_tensor

torch.set_num_threads(1)


def load(run: Path, name: str) -> tuple[list[str], torch.Tensor]:
    dirs = sorted(p for p in (run / "frames").iterdir() if (p / name).is_file())
    return [p.name for p in dirs], torch.stack([grey_tensor(p / name) for p in dirs])


def top_share(v: torch.Tensor, share: float) -> torch.Tensor:
    """1 on the ``share`` of each frame's pixels with the largest values."""
    flat = v.flatten(1)
    k = max(1, int(round(share * flat.shape[1])))
    thr = flat.topk(k, dim=1).values[:, -1:]
    return (flat >= thr).float().view_as(v)


def load_guide(path: str):
    from diffice.modules.common import load_checkpoint

    return load_checkpoint(path, "classifier").guide.float().eval()


def segment(guide, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([guide.segment(x[i:i + 16]).argmax(1, keepdim=True) for i in range(0, len(x), 16)])


def dice(a: torch.Tensor, b: torch.Tensor, c: int) -> list[float]:
    """Per-frame Dice of class ``c`` (frames where neither map has it left out)."""
    out = []
    for u, v in zip(a == c, b == c):
        t = float(u.sum() + v.sum())
        if t > 0:
            out.append(2 * float((u & v).sum()) / t)
    return out


def guide_saliency(guide, x: torch.Tensor) -> torch.Tensor:
    out = []
    for i in range(0, len(x), 8):
        xb = x[i:i + 8].clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(guide(xb).sum(), xb)
        out.append(g.abs())
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dense", type=Path)
    ap.add_argument("control", type=Path)
    ap.add_argument("--guide", default="models/demo/guide.ckpt")
    a = ap.parse_args()
    ids, x = load(a.dense, "input.png")
    _, cf = load(a.dense, "cf.png")
    _, tgt = load(a.dense, "target.png")
    cids, ctrl = load(a.control, "cf.png")
    assert ids == cids, "dense and control runs hold different frames"
    fp = footprint(x, tgt).float()
    guide = load_guide(a.guide)
    sal = low_pass(guide_saliency(guide, x), 2.0)
    seg_x, seg_cf, seg_t, seg_ctrl = (segment(guide, v) for v in (x, cf, tgt, ctrl))
    base = sector_l1(x, tgt)
    masks: dict[str, torch.Tensor] = {"footprint (ceiling)": fp, "everything (dense)": torch.ones_like(fp)}
    for s, thr in ((2, 0.1), (3, 0.06), (3, 0.04)):
        masks[f"diff σ{s} >{thr}"] = grow((low_pass(cf - x, s).abs() > thr).float(), 2)
        masks[f"contrast σ{s} >{thr}"] = grow((low_pass(cf - ctrl, s).abs() > thr).float(), 2)
    masks["layout"] = grow((seg_x != seg_cf).float(), 2)
    changed = (seg_x != seg_cf).float()
    for r in (1, 2):
        masks[f"layout opened {r} px"] = grow(opened(changed, r), 2)  # boundary jitter of r px goes
    masks["layout ∪ contrast σ3 >0.06"] = torch.maximum(masks["layout"], masks["contrast σ3 >0.06"])
    for share in (0.2, 0.35, 0.5):
        masks[f"grad top {share:.0%}"] = grow(top_share(sal, share), 2)
    print(f"{len(ids)} frames; footprint covers {fp.mean().item():.2f} of the frame")
    print("| mask | area | covers footprint | inside footprint | closer, whole frame (cf pasted) | bone Dice input vs pasted |")
    print("|---|---|---|---|---|---|")
    for name, m in masks.items():
        area = m.flatten(1).mean(1)
        ok = fp.flatten(1).sum(1) > 0
        rec = ((m * fp).flatten(1).sum(1) / fp.flatten(1).sum(1).clamp_min(1))[ok]
        prec = ((m * fp).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1))
        pasted = torch.where(m > 0.5, cf, x)
        closer = int((sector_l1(pasted, tgt) < base).sum())
        bone = mean_interval(dice(seg_x, segment(guide, pasted), 2))
        print(f"| {name} | {fmt_interval(mean_interval(area.tolist()))} | {fmt_interval(mean_interval(rec.tolist()))} "
              f"| {fmt_interval(mean_interval(prec.tolist()))} | {fmt_rate(rate_interval(closer, len(ids)))} | {fmt_interval(bone)} |")
    # how much of the input's segmentation a perfect repair (the target itself) keeps: the ceiling
    # of "Dice input vs counterfactual" for a counterfactual that is exactly right
    print("\nper-frame Dice with the guide's segmenter (mean [95 % bootstrap], n frames):")
    for c, name in ((1, "head"), (2, "bone")):
        cells = [f"{lab} {fmt_interval(mean_interval(dice(seg_x, other, c)))}"
                 for lab, other in (("input vs target", seg_t), ("input vs cf", seg_cf), ("input vs control", seg_ctrl),
                                    ("cf vs target", None))
                 if other is not None]
        cells.append(f"cf vs target {fmt_interval(mean_interval(dice(seg_cf, seg_t, c)))}")
        print(f"  {name}: " + "; ".join(cells) + f" (n {len(dice(seg_x, seg_t, c))})")


if __name__ == "__main__":
    main()
