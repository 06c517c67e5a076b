"""The probe's field of view: the polar grid of a convex sector, scan conversion to the canvas,
and the bank of periodic speckle fields every frame takes one of."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from diffice.data.phantom.constants import keyed_rng


@dataclass(frozen=True)
class Geometry:
    """The convex-probe sector for one canvas size, in pixels of that canvas."""

    height: int
    width: int
    xs: np.ndarray  # (Nr, Np) canvas x of every polar sample
    ys: np.ndarray  # (Nr, Np) canvas y
    xs2: np.ndarray  # the same on a half-resolution polar grid (for smooth layers)
    ys2: np.ndarray
    depth2: np.ndarray
    depth: np.ndarray  # (Nr, 1) depth below the probe surface, in canvas heights (about 0..1.1)
    beam: tuple[np.ndarray, np.ndarray]  # (1, Np) unit beam direction (bx, by)
    lateral: np.ndarray  # (1, Np) |angle| / half-angle, in [0, 1]
    maps: tuple  # cv2 fixed-point maps canvas pixel -> polar sample (bilinear scan conversion)
    maps_nearest: tuple  # the same for nearest-neighbour lookup (masks)
    inside: np.ndarray  # (H, W) uint8: 1 inside the sector


# Fields of view of a convex probe as HC18's scanners show them: (half-width of the probe
# surface at the top of the canvas / width, depth where the sector's side meets the canvas's
# side / height, depth of the deep arc / height or 0 when it lies below the canvas). A frame
# picks one (``fov``); the top corners are black, the bottom is imaged to the canvas edge on
# most of them and ends in an arc on a few (a shallower depth setting).
FOVS = (
    (0.30, 0.62, 0.0),
    (0.27, 0.80, 0.0),
    (0.34, 0.72, 0.0),
    (0.24, 0.95, 0.0),
    (0.36, 0.55, 0.0),
    (0.30, 0.85, 0.0),
    (0.22, 0.75, 0.93),
    (0.31, 0.70, 0.97),
)
POLAR_COLUMNS = 0.75  # beam columns per canvas column (the lateral PSF is wider than a pixel)
POLAR_ROWS = 0.85  # depth rows per canvas row (the axial PSF spans about two rows)


def _half_angle(ft: float, fd: float, aspect: float) -> float:
    """Half-angle of a sector whose top arc (apex at -r0, arc top at y = 0) is 2 ft wide and
    whose side meets the canvas side at depth fd: (0.5 cos a - ft) / sin a = fd * H / W."""
    lo, hi = 1e-3, math.acos(min(0.999, 2 * ft)) - 1e-6
    for _ in range(60):  # (0.5 cos a - ft) / sin a decreases in a: bisection
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if (0.5 * math.cos(mid) - ft) / math.sin(mid) > fd * aspect else (lo, mid)
    return 0.5 * (lo + hi)


@functools.lru_cache(maxsize=64)
def geometry(height: int, width: int, fov: int = 0) -> Geometry:
    h, w = float(height), float(width)
    ft, fd, bottom = FOVS[fov % len(FOVS)]
    half = _half_angle(ft, fd, h / w)
    r0 = ft * w / math.sin(half)  # probe-surface radius; the arc's top touches the canvas top
    ax, ay = 0.5 * w, -r0  # apex (virtual, above the canvas)
    r1 = (bottom * h - ay) if bottom else math.hypot(0.5 * w, h - ay) + 1.0
    depth = r1 - r0
    # polar grid: POLAR_ROWS depth rows per canvas row, POLAR_COLUMNS beam columns per canvas column
    nr, npx = max(8, int(round(POLAR_ROWS * height))), max(8, int(round(POLAR_COLUMNS * width)))
    rr = r0 + (np.arange(nr, dtype=np.float32) + 0.5) / nr * depth
    pp = -half + (np.arange(npx, dtype=np.float32) + 0.5) / npx * 2 * half
    sin_p, cos_p = np.sin(pp)[None, :], np.cos(pp)[None, :]
    xs = (ax + rr[:, None] * sin_p).astype(np.float32)
    ys = (ay + rr[:, None] * cos_p).astype(np.float32)
    # scan conversion: canvas pixel centre -> fractional polar index
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    dx, dy = xx - ax, yy - ay
    r = np.hypot(dx, dy)
    phi = np.arctan2(dx, dy)
    inside = (r >= r0) & (r <= r1) & (np.abs(phi) <= half)
    fr = np.clip((r - r0) / depth * nr - 0.5, 0, nr - 1).astype(np.float32)
    fp = np.clip((phi + half) / (2 * half) * npx - 0.5, 0, npx - 1).astype(np.float32)
    fr[~inside], fp[~inside] = -10.0, -10.0  # outside the sector: cv2's constant border (0)
    maps = cv2.convertMaps(fp, fr, cv2.CV_16SC2, nninterpolation=False)
    maps_nearest = cv2.convertMaps(fp, fr, cv2.CV_16SC2, nninterpolation=True)
    dnorm = ((rr - r0) / h).astype(np.float32)  # depth below the probe in canvas heights
    return Geometry(
        height=height,
        width=width,
        xs=xs,
        ys=ys,
        xs2=np.ascontiguousarray(xs[::2, ::2]),
        ys2=np.ascontiguousarray(ys[::2, ::2]),
        depth2=np.ascontiguousarray(dnorm[::2, None]),
        depth=dnorm[:, None],
        beam=(sin_p.astype(np.float32), cos_p.astype(np.float32)),
        lateral=(np.abs(pp) / half)[None, :].astype(np.float32),
        maps=maps,
        maps_nearest=maps_nearest,
        inside=inside.astype(np.uint8),
    )


def scan_convert(polar: np.ndarray, geo: Geometry, nearest: bool = False) -> np.ndarray:
    """Polar grid -> canvas (bilinear, or nearest for masks); 0 outside the sector. Keeps the dtype."""
    m1, m2 = geo.maps_nearest if nearest else geo.maps
    return cv2.remap(polar, m1, m2, cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


@functools.lru_cache(maxsize=16)
def speckle_bank(nr: int, npx: int, count: int = 12, seed: int = 20240, smooth: tuple = (0.6, 0.9)) -> tuple[np.ndarray, np.ndarray]:
    """Periodic fields in the polar grid (``nr`` depth rows x ``npx`` beam columns), made once
    per size: ``speckle`` (count, nr, npx) and ``texture`` (count, ceil(nr/2), ceil(npx/2)).

    speckle: complex Gaussian scatterers convolved (wrap mode, so any circular shift is
    seamless) with a Gaussian PSF of axial sigma ~0.3 % of the depth and a lateral sigma that
    grows with depth from ~0.5 % to ~1 % of the beam columns (beam spreading), then the
    envelope and display smoothing ``smooth`` (polar samples); unit mean. texture: low-frequency tissue echogenicity
    variation at half resolution, zero mean, unit standard deviation, elongated across the
    beam like layered tissue.
    """
    rng = keyed_rng(seed, nr, npx)
    sa = max(0.4, 0.003 * nr)
    sl_near, sl_far = max(0.45, 0.005 * npx), max(0.7, 0.01 * npx)
    depth = (np.arange(nr, dtype=np.float32)[:, None] + 0.5) / nr
    mix = np.clip(depth * 1.2, 0, 1)
    h2, w2 = (nr + 1) // 2, (npx + 1) // 2
    speckle = np.empty((count, nr, npx), dtype=np.float32)
    texture = np.empty((count, h2, w2), dtype=np.float32)
    for k in range(count):
        z = rng.standard_normal((2, nr, npx)).astype(np.float32)
        env2 = np.zeros((nr, npx), dtype=np.float32)
        for part in z:
            ax = ndimage.gaussian_filter1d(part, sa, axis=0, mode="wrap")
            near = ndimage.gaussian_filter1d(ax, sl_near, axis=1, mode="wrap")
            far = ndimage.gaussian_filter1d(ax, sl_far, axis=1, mode="wrap")
            near /= near.std() + 1e-8
            far /= far.std() + 1e-8
            env2 += ((1 - mix) * near + mix * far) ** 2
        # display smoothing (compounding / persistence / the pixel's own area, ``smooth`` in
        # polar samples) averages neighbouring grains, to HC18's display-level local mean/std
        env = ndimage.gaussian_filter(np.sqrt(env2), smooth, mode="wrap")
        speckle[k] = env / env.mean()
        z2 = rng.standard_normal((h2, w2)).astype(np.float32)
        t = ndimage.gaussian_filter(z2, (max(1.0, 0.0125 * nr), max(1.0, 0.03 * npx)), mode="wrap")
        texture[k] = (t - t.mean()) / (t.std() + 1e-8)
    return speckle, texture
