"""Synthesis metrics: layout fidelity, diversity, edit faithfulness outside the edit, realism.

* **Layout fidelity**: an *independent* segmenter (``synthesis.judge_ckpt``: by default the
  trained segmenter, in the demo pack the guide's; it shares no weight with the synthesis model
  nor with the oracle's segmentation that steers two-stage sampling) segments each sample; Dice between the requested
  and the recovered layout per structure, over the samples whose layout requests it. The same
  judge on the real frames the layouts come from gives the ceiling.
* **Diversity** among the samples of one layout: mean pairwise L1 (grey levels / 255) and
  1 - SSIM.
* **Edits**: PSNR and SSIM (grey levels in [0, 1]) outside the edited region (pixels whose class
  did not change, so the ``synthesis.edit_dilation`` ring that RePaint generates to blend the
  edit in counts) against the source frame; the PSNR of the held region alone (outside the
  dilated edit: RePaint pastes it, so it equals the source and reaches the 60 dB cap of
  :mod:`diffice.metrics.psnr`; lower for the regenerating control); and the fraction of changed pixels the judge
  labels with the requested class (did the edit happen?).
* **Realism**: FID (Inception-v3) and FSD (the oracle's backbone, or official SonoNet-16
  weights when configured) between samples and real frames of the same planes.
* **Washed-out frames** (:func:`washed_out`): a sample whose never-imaged sector corners or whose
  darkest tissue is brighter than in 99 % of the real frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from diffice.errors import UserError

Segment = Callable[[torch.Tensor], torch.Tensor]


def load_segment(path: str | Path, device="cpu") -> tuple[Segment, list[str], str]:
    """``(segment, classes, kind)`` from a segmenter, guide (classifier) or oracle checkpoint:
    ``segment(x)`` maps (B,1,H,W) in [-1,1] to class indices (B,H,W)."""
    from diffice.modules.common import load_checkpoint

    if not path or not Path(path).exists():
        raise UserError(f"{path}: segmenter checkpoint not found (synthesis.segmenter_ckpt / synthesis.judge_ckpt)")
    module = load_checkpoint(path, None, map_location=device)
    if module.kind == "segmenter":
        net = module.net
    elif module.kind == "classifier":
        net = module.guide.segmenter
    elif module.kind == "oracle":
        oracle = module.oracle

        def net(x):
            return oracle(x)["seg_logits"]
    else:
        raise UserError(f"{path}: a '{module.kind}' checkpoint holds no segmenter (give a segmenter, guide or oracle checkpoint)")
    classes = list(module.cfg.data.classes)

    @torch.no_grad()
    def segment(x: torch.Tensor) -> torch.Tensor:
        return net(x.to(device)).argmax(dim=1).cpu()

    if hasattr(net, "eval"):
        net.eval()
    return segment, classes, module.kind


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM map (B, 1, H, W) of grey frames in [0, 1] (torchmetrics, Gaussian 11x11 window)."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    _, full = ssim(a.float(), b.float(), data_range=1.0, return_full_image=True)
    return full


def psnr_ssim_outside(edited: torch.Tensor, source: torch.Tensor, region: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-frame PSNR (dB, :func:`diffice.metrics.psnr.psnr`: at most 60) and mean SSIM outside
    ``region`` (B, H, W) bool; frames in [-1, 1]; NaN for both where nothing lies outside."""
    from diffice.metrics.psnr import psnr

    outside = ~region.bool()
    smap = ssim_map((edited.float() + 1) / 2, (source.float() + 1) / 2)[:, 0]
    ss = [float(smap[i][m].mean()) if bool(m.any()) else math.nan for i, m in enumerate(outside)]
    return psnr(edited, source, outside), ss


def diversity(samples: torch.Tensor) -> dict[str, float]:
    """Mean pairwise L1 and 1 - SSIM among the samples (N, 1, H, W) of one layout."""
    n = samples.shape[0]
    if n < 2:
        return {"l1": math.nan, "ssim_distance": math.nan}
    x = (samples.float() + 1) / 2
    i, j = torch.triu_indices(n, n, 1)
    l1 = (x[i] - x[j]).abs().mean(dim=(1, 2, 3))
    s = ssim_map(x[i], x[j]).mean(dim=(1, 2, 3))
    return {"l1": float(l1.mean()), "ssim_distance": float((1 - s).mean())}


def per_structure(dices: Sequence[dict], classes: Sequence[str]) -> dict[str, float | None]:
    """Mean Dice per structure over the records that request it (``dices``: {class: value|None})."""
    out: dict[str, float | None] = {}
    for c in classes[1:]:
        vals = [d[c] for d in dices if d.get(c) is not None and not math.isnan(d[c])]
        out[c] = float(np.mean(vals)) if vals else None
    return out


def frechet(sample_feats: np.ndarray, real_feats: np.ndarray) -> float | None:
    """Fréchet distance, or None below ``FRECHET_MIN_N`` frames a side (:mod:`diffice.metrics.kid`)."""
    from diffice.metrics.frechet import frechet_distance, gaussian_stats
    from diffice.metrics.kid import frechet_shown

    if len(sample_feats) < 2 or len(real_feats) < 2 or not frechet_shown(len(sample_feats), len(real_feats)):
        return None
    return float(frechet_distance(*gaussian_stats(sample_feats), *gaussian_stats(real_feats)))


def realism_pair(key: str, kid_key: str, a: np.ndarray, b: np.ndarray) -> dict:
    """``{key}`` (a Fréchet distance, None below the documented N), ``{key}_n`` and KID ± its subset std."""
    from diffice.metrics.kid import kernel_distance

    k = kernel_distance(a, b)
    return {key: frechet(a, b), f"{key}_n": [len(a), len(b)], kid_key: k["kid"], f"{kid_key}_std": k["kid_std"]}


BLACK = 2            # grey levels: a pixel at or below this is black (outside the imaged sector)
CORNER_SHARE = 0.99  # a pixel black in at least this share of the real frames lies outside every sector
SECTOR_SHARE = 0.95  # a pixel not black in at least this share of them lies inside (nearly) every sector
FLOOR_PERCENTILE = 5 # a frame's dark level: this percentile of its grey levels inside the sector
WASHED_PERCENTILE = 99
CORNER_VISIBLE = 10  # grey levels: corners darker than this read as black on a display, whatever the real frames' 99th percentile


def washed_out(samples: np.ndarray, real: np.ndarray, control: np.ndarray | None = None) -> dict:
    """How many ``samples`` look washed out next to ``real`` frames (uint8 (N, H, W) each).

    From the real frames: the *corner* pixels (black in >= 99 % of them: never imaged, whatever the
    sector) and the *sector* pixels (not black in >= 95 %). Per frame: the mean grey level of the
    corners and the dark level (5th percentile of the sector's grey levels: fluid and dark tissue).
    A frame is washed out when either exceeds the 99th percentile of the real frames' values (the
    corners' at least ``CORNER_VISIBLE`` grey levels: real corners are exactly black, and a corner
    a few levels above black still looks black), so at most about 1-2 % of real frames are; ``control`` (other real frames, e.g. the
    realism floor's training frames) gives that rate for frames the thresholds were not set on.
    """
    from diffice.metrics.stats import rate_interval

    real = np.asarray(real, dtype=np.float64)
    corner = (real <= BLACK).mean(0) >= CORNER_SHARE
    sector = (real > BLACK).mean(0) >= SECTOR_SHARE

    def stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float64)
        c = x[:, corner].mean(1) if corner.any() else np.zeros(len(x))
        return c, np.percentile(x[:, sector], FLOOR_PERCENTILE, axis=1)

    rc, rf = stats(real)
    thr_c = max(float(np.percentile(rc, WASHED_PERCENTILE)), CORNER_VISIBLE) if corner.any() else math.inf
    thr_f = float(np.percentile(rf, WASHED_PERCENTILE))

    def flagged(x: np.ndarray) -> np.ndarray:
        c, f = stats(x)
        return (c > thr_c) | (f > thr_f)

    sc, sf = stats(samples)
    s = (sc > thr_c) | (sf > thr_f)
    out = {"washed_out": float(s.mean()) if len(s) else None, "washed_out_n": int(len(s)),
           "washed_out_corner": float((sc > thr_c).mean()) if len(sc) else None,
           "washed_out_dark": float((sf > thr_f).mean()) if len(sf) else None,
           "washed_out_ci": rate_interval(int(s.sum()), int(len(s))),
           "washed_out_corner_level": float(np.median(sc)) if corner.any() and len(sc) else None,
           "washed_out_dark_level": float(np.median(sf)) if len(sf) else None,
           "washed_out_thresholds": {"corner": None if math.isinf(thr_c) else thr_c, "dark": thr_f,
                                     "corner_pixels": int(corner.sum()), "sector_pixels": int(sector.sum()),
                                     "real_frames": int(len(real))},
           "washed_out_real_corner_level": float(np.median(rc)) if corner.any() else None,
           "washed_out_real_dark_level": float(np.median(rf))}
    if control is not None and len(control):
        k = flagged(control)
        out["washed_out_control"] = float(k.mean())
        out["washed_out_control_ci"] = rate_interval(int(k.sum()), int(len(k)))
    return out


def summary_intervals(layout_recs: list[dict], edit_recs: list[dict], classes: Sequence[str]) -> dict:
    """95 % intervals of a synthesis run's means and rates (:mod:`diffice.metrics.stats`): layout Dice
    per structure over samples, diversity over layouts, edit PSNR / accuracy over edits (bootstrap);
    edits >= 30 dB, samples kept by stage 2 and anomaly edits within tolerance (Clopper–Pearson)."""
    from diffice.metrics.stats import mean_interval, rate_interval

    samples = [s for r in layout_recs for s in r["samples"]]
    out: dict = {}
    for c in classes[1:]:
        vals = [(s.get("judge_dice") or {}).get(c) for s in samples]
        out[f"dice_{c}"] = mean_interval([v for v in vals if v is not None])
        vals1 = [(s.get("judge_dice_stage1") or {}).get(c) for s in samples if "judge_dice_stage1" in s]
        if vals1:
            out[f"dice_stage1_{c}"] = mean_interval([v for v in vals1 if v is not None])
    out["diversity_l1"] = mean_interval([r["diversity"]["l1"] for r in layout_recs])
    kept = [s.get("kept_round") for s in samples if "kept_round" in s]
    out["kept_stage2"] = rate_interval(sum(1 for k in kept if k and k > 0), len(kept))
    ps = [r["psnr_outside"] for r in edit_recs if r["psnr_outside"] is not None]
    out["edit_psnr_outside_mean"] = mean_interval([p for p in ps if math.isfinite(p)])
    out["edit_psnr_outside_at_least_30"] = rate_interval(sum(1 for p in ps if p >= 30), len(ps))
    out["edit_accuracy"] = mean_interval([r.get("edit_accuracy") for r in edit_recs])
    ok = [bool(r["within_tolerance"]) for r in edit_recs if "within_tolerance" in r]
    out["anomaly_within"] = rate_interval(sum(ok), len(ok))
    return {k: v for k, v in out.items() if v["n"]}
