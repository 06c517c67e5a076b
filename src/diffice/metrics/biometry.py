"""Head biometry from a segmentation: the head circumference (HC) of an ellipse fitted to the head.

HC18's annotators fitted an ellipse to the skull's outer edge and measured its perimeter; here
the ellipse is fitted to the segmented head region (every non-background class, its largest
connected component) by its second moments: a filled ellipse with semi-axes a, b has covariance
eigenvalues a²/4 and b²/4, so a = 2√λ₁, b = 2√λ₂. The coordinates are in millimetres before the
fit (a frame resized to the model's size has rectangular pixels), and the perimeter is
Ramanujan's approximation (:func:`diffice.data.anomalies.ellipse_perimeter`, the one the phantom
uses). Moments are robust to a ragged edge, which a least-squares fit to boundary pixels is not.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from diffice.data.anomalies import ellipse_perimeter
from diffice.nets.dice import dice, dice_or_none

MIN_PIXELS = 20  # a head smaller than this is no head: HC is NaN


def head_ellipse(mask: np.ndarray, pixel_mm: tuple[float, float] = (1.0, 1.0)) -> tuple[float, float] | None:
    """Semi-axes (a, b) in mm (a >= b) of the ellipse with the second moments of the largest
    connected non-background region of ``mask`` (H, W) class indices; None when there is none."""
    fg = np.asarray(mask) > 0
    if fg.sum() < MIN_PIXELS:
        return None
    lab, n = ndimage.label(fg)
    if n > 1:
        sizes = ndimage.sum_labels(fg, lab, index=np.arange(1, n + 1))
        fg = lab == (1 + int(np.argmax(sizes)))
        if fg.sum() < MIN_PIXELS:
            return None
    rows, cols = np.nonzero(fg)
    pts = np.stack([rows * float(pixel_mm[0]), cols * float(pixel_mm[1])], 1)
    cov = np.cov(pts, rowvar=False)
    lam = np.sort(np.linalg.eigvalsh(cov))[::-1].clip(min=0.0)
    return 2.0 * math.sqrt(lam[0]), 2.0 * math.sqrt(lam[1])


def head_circumference(mask: np.ndarray, pixel_mm: tuple[float, float]) -> float:
    """HC in mm of the segmented head in ``mask`` at pixel spacing (row_mm, col_mm); NaN if no
    head or an unknown spacing."""
    if not all(math.isfinite(float(p)) and float(p) > 0 for p in pixel_mm):
        return math.nan
    axes = head_ellipse(mask, pixel_mm)
    return math.nan if axes is None else float(ellipse_perimeter(*axes))


def head_dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """Dice of the head regions (every non-background class) of two class maps; None if both empty."""
    return dice_or_none(dice(np.asarray(a) > 0, np.asarray(b) > 0, 2)[1])


def biometry_fields(seg_input: np.ndarray, seg_cf: np.ndarray, seg_target: np.ndarray | None,
                    pixel_mm, hc_annotated: float) -> dict:
    """A counterfactual record's biometry: HC (mm) of the segmented head of input, counterfactual
    and clean target (all by the same segmenter), the annotated HC, and the head Dice of input and
    counterfactual against the target's segmentation. Unknown values are None."""

    def known(v: float) -> float | None:
        return float(v) if math.isfinite(v) else None

    px = tuple(float(p) for p in pixel_mm) if pixel_mm is not None else (math.nan, math.nan)
    out = {"pixel_mm": [known(p) for p in px], "hc_annotated_mm": known(float(hc_annotated)),
           "hc_input_mm": known(head_circumference(seg_input, px)), "hc_cf_mm": known(head_circumference(seg_cf, px)),
           "hc_target_mm": None, "head_dice_target_input": None, "head_dice_target_cf": None}
    if seg_target is not None:
        out["hc_target_mm"] = known(head_circumference(seg_target, px))
        out["head_dice_target_input"] = head_dice(seg_input, seg_target)
        out["head_dice_target_cf"] = head_dice(seg_cf, seg_target)
    return out
