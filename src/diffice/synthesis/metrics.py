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
  dilated edit, infinite for RePaint by construction, finite for the regenerating control); and the fraction of changed pixels the judge
  labels with the requested class (did the edit happen?).
* **Realism**: FID (Inception-v3) and FSD (the oracle's backbone, or official SonoNet-16
  weights when configured) between samples and real frames of the same planes.
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
    """Per-frame PSNR (dB) and mean SSIM outside ``region`` (B, H, W) bool; frames in [-1, 1]."""
    a, b = (edited.float() + 1) / 2, (source.float() + 1) / 2
    outside = ~region.bool()
    smap = ssim_map(a, b)[:, 0]
    psnr, ss = [], []
    for i in range(a.shape[0]):
        m = outside[i]
        if not m.any():
            psnr.append(math.nan)
            ss.append(math.nan)
            continue
        mse = float(((a[i, 0] - b[i, 0]) ** 2)[m].mean())
        psnr.append(math.inf if mse == 0 else 10 * math.log10(1.0 / mse))
        ss.append(float(smap[i][m].mean()))
    return psnr, ss


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
    from diffice.metrics.frechet import frechet_distance, gaussian_stats

    if len(sample_feats) < 2 or len(real_feats) < 2:
        return None
    return float(frechet_distance(*gaussian_stats(sample_feats), *gaussian_stats(real_feats)))
