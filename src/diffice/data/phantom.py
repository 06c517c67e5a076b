"""A procedural fetal-head ultrasound simulator with ground truth, modelled on HC18's
trans-thalamic frames and SonoNet's BRAIN-TV / BRAIN-CB examples (``docs/data.md``; how close
it gets: ``diffice realism``).

Every frame is rendered in the probe's own polar grid (rows = depth along the beam, columns =
beam angle) and scan-converted to a convex-probe sector on a ``[height, width]`` canvas. That
makes the physics cheap and axis-aligned:

* field of view: one of ``FOVS`` per frame (the probe's depth setting): black top corners, the
  sector's sides meeting the canvas sides part-way down, the bottom imaged to the canvas edge
  (or ending in an arc), as HC18's scanners show it;
* speckle: complex Gaussian scatterers convolved with an anisotropic point-spread function
  (short along the beam, wide across it, widening with depth), then the envelope ``|.|``
  (Rayleigh statistics) and a small display smoothing. A small bank of periodic speckle fields
  is made once per size and every frame takes one at a random circular shift, so a frame costs
  no convolution;
* the scanner: depth attenuation ``exp(-a * depth)`` with the operator's time-gain
  compensation, posterior shadowing ``exp(-k * cumsum(bone))`` along every ray, reverberation
  haze below the near skull, a receiver noise floor, gain and log compression;
* anatomy on the ellipse of the head (``u`` along the occipito-frontal axis, ``v`` across),
  sized by the patient's gestational age: amniotic fluid, tissue and the maternal abdominal wall
  around the head; a skull of varying thickness and ossification, brightest where its normal
  faces the beam and dropping out at the lateral walls; hypoechoic brain with slowly varying
  echogenicity and echogenic lines; the falx (an interrupted midline echo); heart-shaped
  hypoechoic thalami (TH); the cavum septi pellucidi (CSP) anterior to them, a soft-edged fluid
  box between two thin echoes; the insula; and — when the plane tilts towards the
  trans-cerebellar plane — the fossa posterior (FP: cerebellar hemispheres, vermis and the
  anechoic cisterna magna). A tilt towards the trans-ventricular plane hides the thalami and
  shows the atrium of the lateral ventricle with its echogenic choroid plexus.
* acquisition faults: defocus blur, bad gain / contrast, electronic noise (they lower the bone
  boundary sharpness ``qs_bone``), the head partly outside the image (a nuisance that keeps
  the concepts), off-plane tilt (changes ``qs_th``, ``qs_csp``, ``qs_fp``).

Labels follow the paper's criteria (Pegios et al. 2024, Fig. 1): a standard plane (SP) shows
TH and CSP, does not show FP, and has a sharp bone boundary. Concept scores lie in [0, 1]:
``qs_th`` / ``qs_csp`` = visibility of TH / CSP, ``qs_fp = 1 - visibility of FP`` (1 = FP
absent, as an SP requires), ``qs_bone`` = bone-boundary sharpness. A frame is SP iff every
concept is >= 0.5; the sampler keeps a margin (SP concepts >= 0.75, a faulty concept <= 0.3) so
the classes are separable at 64x80.

Ground-truth counterfactual: every frame's latent parameters are drawn as a good standard
plane first; an NSP frame then overrides only the faulty ones. ``target`` renders the good
parameters with the same anatomy, probe position and speckle, so it equals the image for an
SP frame and differs from it only where the quality differs for an NSP frame.

Everything is deterministic in ``(seed, index)``: frame ``i`` belongs to patient
``i // frames_per_patient``; the patient's anatomy comes from ``(seed, patient)``, the frame's
pose, faults and speckle from ``(seed, i)``. Images are uint8 (0..255), masks uint8 class
indices ``background 0, head 1, bone 2, th 3, csp 4, fp 5``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage
from scipy.signal import lfilter

from diffice.data import anomalies as AN

CLASSES = ("background", "head", "bone", "th", "csp", "fp")
CONCEPTS = ("qs_th", "qs_csp", "qs_fp", "qs_bone")
BG, HEAD, BONE, TH, CSP, FP = range(6)

# Concept margins used by the sampler (see module docstring).
GOOD_MIN = 0.75
BAD_MAX = 0.3
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
# Appearance, fitted by eye and by grey-level percentiles against HC18 (docs/data.md):
DYNAMIC_RANGE_DB = 45.0  # log compression of the display
SPECKLE_SMOOTH = (0.6, 0.9)  # display smoothing of the speckle envelope (rows, beam columns)
TISSUE_MOD = 0.45  # low-frequency echogenicity variation of the tissue around the head
HEAD_A = (0.25, 0.12)  # occipito-frontal semi-axis / width = HEAD_A[0] + HEAD_A[1] * ga
NOISE_FLOOR = 0.004  # receiver noise (amplitude; the display's white is 2)
# Acquisition faults at full severity: defocus sigma / height, the contrast fault's lifted
# floor and flattening of the display, the noise fault's clutter amplitude
FAULT_LOOK = {"blur": 0.022, "haze": 0.2, "flatten": 0.6, "noise": 0.05}
LOOK = {
    "gain": 0.2,  # added to every frame's log gain
    "bone": 2.0,  # skull reflectivity
    "streak": 0.8,  # echogenic patches in the tissue
    "tissue": 1.0,  # tissue echogenicity scale
    "brain": 1.8,  # parenchyma echogenicity scale
    "sulci": 0.12,  # echogenic lines in the brain
    "glint": 1.5,  # sparse bright echoes in the brain
    "falx": 0.15,  # midline echo
    "haze": 0.6,  # reverberation haze below the near skull
    "bonetex": 0.6,  # irregular ossification along the skull
}

# NSP fault kinds and their relative frequencies.
FAULTS = ("cerebellar", "ventricular", "no_csp", "blur", "contrast", "noise")
# the brain planes a frame can show (index = the ``plane`` of the data contract); a tilt
# fault moves the frame into the trans-ventricular or trans-cerebellar plane
PLANES = ("trans-thalamic", "trans-ventricular", "trans-cerebellar")
GA_WEEKS = (18.0, 36.0)  # gestational-age range of a patient's ga in [0, 1] (about HC18's)
FAULT_P = np.array([0.25, 0.2, 0.15, 0.2, 0.1, 0.1])


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in keys])


# ----------------------------------------------------------------------------- geometry


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
    rng = _rng(seed, nr, npx)
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


# ----------------------------------------------------------------------------- latents


def is_sp(index: int, seed: int, sp_fraction: float) -> bool:
    """Class of frame ``index``: a golden-ratio sequence, so every stretch of frames holds
    close to ``sp_fraction`` standard planes whatever the count."""
    return ((index + 0.5) * GOLDEN + _sp_offset(seed)) % 1.0 < sp_fraction


@functools.lru_cache(maxsize=64)
def _sp_offset(seed: int) -> float:
    return float(_rng(seed, 7).random())


@functools.lru_cache(maxsize=4096)
def sample_patient(seed: int, patient: int) -> dict:
    """Anatomy shared by every frame of a patient (sizes relative to the canvas). Cached:
    treat the returned dict as read-only.

    ``ga`` in [0, 1] places the fetus in the gestational-age range of HC18 (about 18 to 36
    weeks): the head grows with it (as seen by a probe whose depth setting follows the head,
    so the growth on the canvas is smaller than in millimetres) and so does the skull's
    thickness and echogenicity."""
    g = _rng(seed, 1, patient)
    ga = float(g.random())
    return {
        "ga": ga,
        "a": HEAD_A[0] + HEAD_A[1] * ga + g.uniform(-0.012, 0.012),  # occipito-frontal semi-axis / width
        "ratio": g.uniform(0.74, 0.86),  # biparietal / occipito-frontal
        "angle": g.uniform(-16, 16),  # head rotation in degrees
        "front": float(g.choice([-1.0, 1.0])),  # which end of the u axis is frontal
        "skull": (0.02 + 0.016 * ga) * g.uniform(0.85, 1.15),  # skull thickness / semi-axis
        "skull_h": g.uniform(-1, 1, size=(3, 2)),  # harmonics of thickness and echogenicity
        "bone_echo": 0.75 + 0.5 * ga,  # ossification: brighter skull later in pregnancy
        "brain": g.uniform(0.025, 0.045),  # parenchyma echogenicity (the fetal brain is hypoechoic)
        "sulci": g.uniform(0.5, 1.3),  # strength of the echogenic lines inside the brain
        "tissue": g.uniform(0.04, 0.09),  # maternal / fetal-body tissue echogenicity
        "fluid": g.uniform(0.03, 0.3),  # width of the fluid rim around the head (relative)
        "fluid_h": g.uniform(-1, 1, size=(3, 2)),  # fluid-boundary harmonics
        "th_u": g.uniform(-0.1, -0.02),
        "th_v": g.uniform(0.11, 0.14),
        "th_r": g.uniform(0.17, 0.2),
        "th_tilt": g.uniform(0.35, 0.6),  # radians: the pair converges anteriorly (heart shape)
        "csp_u": g.uniform(0.4, 0.45),
        "csp_len": g.uniform(0.15, 0.18),
        "csp_w": g.uniform(0.09, 0.11),
        "cb_r": g.uniform(0.16, 0.19),
        "wall": g.uniform(0.07, 0.2),  # maternal abdominal wall thickness (canvas heights)
        "fascia": g.uniform(0.1, 1.0, size=4),  # depths of bright fascia lines in the wall (fraction of it)
    }


def sample_frame(index: int, seed: int = 0, sp_fraction: float = 0.152, frames_per_patient: int = 4) -> dict:
    """All latent parameters of frame ``index``: ``good`` (an SP) and ``actual`` (the frame)."""
    patient = index // max(1, frames_per_patient)
    g = _rng(seed, 2, index)
    good = {
        "dx": g.uniform(-0.05, 0.05),  # head centre offset / width
        "dy": g.uniform(-0.05, 0.04),  # head centre offset / height
        "dangle": g.uniform(-8, 8),
        "scale": g.uniform(0.93, 1.05),
        "vis_th": g.uniform(0.8, 1.0),
        "vis_csp": g.uniform(0.8, 1.0),
        "vis_fp": g.uniform(0.0, 0.12),
        "vis_tv": 0.0,
        "blur": g.uniform(0.0, 0.15),  # severities in [0, 1]
        "contrast": g.uniform(0.0, 0.15),
        "noise": g.uniform(0.0, 0.15),
        "gain": g.uniform(-1.1, -0.4),  # log gain (the operator's gain knob)
        "atten": g.uniform(0.4, 1.0),  # depth attenuation (after the scanner's default TGC)
        "tgc": [float(x) for x in g.uniform(-0.25, 0.25, size=3)],  # the operator's TGC sliders
        "reverb": g.uniform(0.3, 1.0),  # reverberation haze below the near skull
        "fov": int(g.integers(len(FOVS))),  # probe depth / field of view
        "speckle": [float(x) for x in g.random(4)],  # speckle field and its circular shifts
        "cut": 0.0,
    }
    # head partly outside the image: a nuisance, same in image and target
    if g.random() < 0.12:
        side = g.choice([-1.0, 1.0])
        good["dx"] = side * g.uniform(0.14, 0.22)
        good["cut"] = 1.0
    sp = is_sp(index, seed, sp_fraction)
    actual = dict(good)
    faults: list[str] = []
    if not sp:
        n = 1 + int(g.random() < 0.3)
        faults = list(g.choice(FAULTS, size=n, replace=False, p=FAULT_P))
        for f in faults:
            if f == "cerebellar":  # tilted towards the trans-cerebellar plane: FP shows
                actual["vis_fp"] = g.uniform(0.75, 1.0)
                actual["vis_th"] = min(actual["vis_th"], g.uniform(0.2, 1.0))
            elif f == "ventricular":  # tilted towards the trans-ventricular plane: no TH
                actual["vis_th"] = g.uniform(0.0, 0.2)
                actual["vis_tv"] = g.uniform(0.7, 1.0)
            elif f == "no_csp":
                actual["vis_csp"] = g.uniform(0.0, 0.25)
            else:  # blur | contrast | noise
                actual[f] = g.uniform(0.75, 1.0)
    return {"index": index, "patient": patient, "sp": sp, "faults": faults, "good": good, "actual": actual}


def plane_of(faults: list[str]) -> int:
    """Index into :data:`PLANES` of a frame with these faults (the first tilt fault decides)."""
    for f in faults:
        if f == "ventricular":
            return 1
        if f == "cerebellar":
            return 2
    return 0


def ga_weeks(seed: int, patient: int) -> float:
    """Gestational age in weeks of a phantom patient (its head size grows with it)."""
    lo, hi = GA_WEEKS
    return lo + (hi - lo) * float(sample_patient(seed, patient)["ga"])


def concepts_of(lat: dict) -> dict[str, float]:
    """Concept scores in [0, 1] of a latent parameter set."""
    return {
        "qs_th": float(lat["vis_th"]),
        "qs_csp": float(lat["vis_csp"]),
        "qs_fp": float(1.0 - lat["vis_fp"]),
        "qs_bone": float(1.0 - max(lat["blur"], lat["contrast"], lat["noise"])),
    }


def label_of(concepts: dict[str, float]) -> int:
    """The paper's SP criteria: TH and CSP shown, FP not shown, sharp bone (all >= 0.5)."""
    return int(all(concepts[c] >= 0.5 for c in CONCEPTS))


# ----------------------------------------------------------------------------- rendering


def _ramp(x: np.ndarray, width: float) -> np.ndarray:
    """Soft step: 0 for x <= -width, 1 for x >= width, linear in between."""
    y = x * (0.5 / width) + 0.5
    np.maximum(y, 0.0, out=y)
    return np.minimum(y, 1.0, out=y)


def _bump(x: np.ndarray) -> np.ndarray:
    """A cheap compact stand-in for exp(-x^2): (1 - x^2 / 3)^2 for |x| < sqrt(3), else 0."""
    y = x * x
    y *= -1.0 / 3.0
    y += 1.0
    np.maximum(y, 0.0, out=y)
    return y * y


def _box_blur(img: np.ndarray, sigma_r: float, sigma_c: float) -> np.ndarray:
    """Approximate Gaussian blur: two box passes (cost independent of sigma)."""
    kr = max(1, int(round(math.sqrt(6.0 * sigma_r * sigma_r + 1.0))))  # two boxes of this size ~ sigma
    kc = max(1, int(round(math.sqrt(6.0 * sigma_c * sigma_c + 1.0))))
    out = cv2.blur(img, (kc, kr), borderType=cv2.BORDER_REPLICATE)
    return cv2.blur(out, (kc, kr), borderType=cv2.BORDER_REPLICATE)


def _oval(u: np.ndarray, v: np.ndarray, u0: float, v0: float, ru: float, rv: float, soft: float = 0.25) -> np.ndarray:
    q = ((u - u0) * (1.0 / ru)) ** 2
    q += ((v - v0) * (1.0 / rv)) ** 2
    return _ramp(1.0 - q, soft)


def _layers(pat: dict, lat: dict, geo: Geometry, tex: np.ndarray, anomaly: dict | None = None) -> dict:
    """Anatomy of one frame pose in the polar grid (shared by the image and its target).

    ``anomaly``: ``{"name", "severity", "ga"}`` of :mod:`diffice.data.anomalies` (None: normal).

    Full-grid layers: ``back`` (tissue / fluid outside the head), ``rho`` (elliptic radius).
    Layers inside the head's bounding box ``crop``: skull, brain and the structures.
    """
    h, w = geo.height, geo.width
    a = pat["a"] * w * lat["scale"]
    b = a * pat["ratio"]
    an, sev = (anomaly["name"], float(anomaly["severity"])) if anomaly else ("", 0.0)
    mm = AN.mm_per_pixel(a, b, anomaly["ga"]) if anomaly else 1.0  # the normal head sets the scale
    if an == "microcephaly":
        a, b = a * (1.0 - sev), b * (1.0 - sev)
    cx, cy = w * (0.5 + lat["dx"]), h * (0.54 + lat["dy"])
    ang = math.radians(pat["angle"] + lat["dangle"])
    ca, sa = math.cos(ang), math.sin(ang)
    t = max(pat["skull"], 1.1 / b)  # at least about a pixel thick (small frames would alias it)

    # outside the head, on the half-resolution grid (smooth): fluid around the head out to
    # rho = rim(theta) (3 harmonics), tissue with a low-frequency texture beyond it
    dx, dy = geo.xs2 - np.float32(cx), geo.ys2 - np.float32(cy)
    pu = dx * np.float32(ca / a) + dy * np.float32(sa / a)
    pv = dy * np.float32(ca / b) - dx * np.float32(sa / b)
    rho = np.sqrt(pu * pu + pv * pv)
    if an == "lemon":
        rho = rho / AN.lemon_radius(pu * pat["front"], pv, sev, pat["ratio"]).astype(np.float32)
    inv = 1.0 / (rho + 1e-6)
    c1, s1 = pu * inv, pv * inv
    c2, s2 = c1 * c1 - s1 * s1, 2.0 * c1 * s1
    c3, s3 = c1 * c2 - s1 * s2, s1 * c2 + c1 * s2
    hm = [[float(x) for x in row] for row in pat["fluid_h"]]  # Python floats keep float32 maths
    wob = hm[0][0] * c1 + hm[0][1] * s1 + hm[1][0] * c2 + hm[1][1] * s2 + hm[2][0] * c3 + hm[2][1] * s3
    rim = (1.0 + pat["fluid"]) + (0.5 * pat["fluid"]) * wob
    tissue = np.maximum(1.0 + TISSUE_MOD * tex, 0.15)
    # echogenic patches in the tissue (fetal body, uterine wall, placenta): where a second
    # texture is high, elongated across the beam
    tex_b = np.roll(tex, (tex.shape[0] // 2, tex.shape[1] // 3), axis=(0, 1))
    streak = _ramp(tex_b - 1.1, 0.3)
    back = _ramp(rho - rim, 0.06) * (pat["tissue"] * LOOK["tissue"] * (tissue + LOOK["streak"] * streak))
    # maternal abdominal wall near the probe: layered tissue with bright fascia lines (arcs
    # of equal depth) over a darker fat layer
    fascia = sum(np.exp(-(((geo.depth2 - float(f) * pat["wall"]) * (1.0 / 0.007)) ** 2)) for f in pat["fascia"])
    wall = _ramp(pat["wall"] - geo.depth2, 0.012) * ((pat["tissue"] * LOOK["tissue"] * 1.3) * (0.6 + 3.0 * fascia)) * tissue
    np.maximum(back, wall, out=back)
    nr, npx = geo.xs.shape
    back = cv2.resize(back, (back.shape[1] * 2, back.shape[0] * 2), interpolation=cv2.INTER_LINEAR)[:nr, :npx]

    # bounding box of the head (skull included), from the half-resolution grid
    near = rho < 1.0 + 3.0 * t + 3.0 / b  # the skull band ends at 1 + 1.73 * 1.45 t
    rows, cols = np.flatnonzero(near.any(axis=1)), np.flatnonzero(near.any(axis=0))
    if len(rows) == 0:
        rows, cols = np.array([0]), np.array([0])
    crop2 = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    crop = (slice(2 * rows[0], min(nr, 2 * rows[-1] + 2)), slice(2 * cols[0], min(npx, 2 * cols[-1] + 2)))
    size = (crop[0].stop - crop[0].start, crop[1].stop - crop[1].start)

    # smooth structures on the half-resolution grid, upsampled into the crop
    u2 = pu[crop2] * pat["front"]  # +u is frontal
    av2 = np.abs(pv[crop2])  # paired structures are mirror images about the midline
    rho2 = rho[crop2]
    tr = pat["th_r"]
    th_rv = tr * 0.6 * a / b
    ct, st = math.cos(pat["th_tilt"]), math.sin(pat["th_tilt"])
    du, dv = u2 - pat["th_u"], av2 - pat["th_v"]
    th_al, th_ac = du * ct - dv * st, du * st + dv * ct  # the pair converges anteriorly: a heart
    cr, crv = pat["cb_r"], pat["cb_r"] * a / b
    tx = tex[crop2]
    # a second, independent texture: the same bank field read at a shifted place
    tx2 = np.roll(tex, (tex.shape[0] // 3, tex.shape[1] // 2), axis=(0, 1))[crop2]
    brain_zone = _ramp(0.86 - rho2, 0.06)
    half_res = {
        # thalami: paired hypoechoic ovals either side of the midline, with an echogenic rim
        "th": _oval(th_al, th_ac, 0.0, 0.0, tr, th_rv),
        "th_rim": _oval(th_al, th_ac, 0.0, 0.0, tr * 1.2, th_rv * 1.3, 0.6),
        # fossa posterior: cerebellar hemispheres and the anechoic cisterna magna behind them
        "cb": _oval(u2, av2, -0.56, 0.14, cr, crv),
        "cb_rim": _oval(u2, av2, -0.56, 0.14, cr * 1.15, crv * 1.15, 0.6),
        "vermis": _oval(u2, av2, -0.58, 0.0, cr * 0.9, 0.05, 0.5),
        "cm": _oval(u2, av2, -0.83, 0.0, 0.1, 0.36),
        # trans-ventricular cue: atrium of the lateral ventricle with its bright choroid plexus
        # insula / Sylvian fissure: an echogenic arc, lateral in both hemispheres
        "ins": _oval(u2, av2, 0.05, 0.74, 0.3, 0.2, 0.6) * (av2 < 0.7),
        # echogenic lines (sulci, vessels, the pia): level lines of a smooth field elongated
        # across the beam, interrupted by a second field; parenchyma brightness varies slowly
        "sul": _bump(tx * (1.0 / 0.09)) * _ramp(tx2 - 0.3, 0.4) * brain_zone,
        "paren": np.maximum(1.0 + 0.25 * tx2, 0.3),
        "gap": _ramp(tx + 0.8, 0.3),  # interruptions of the falx
        "bone_tex": np.maximum(1.0 + LOOK["bonetex"] * tx2, 0.25),  # irregular ossification
    }
    if lat["vis_tv"] > 0:  # (only trans-ventricular tilts show them: skipped otherwise)
        atr_w = 0.5 * sev / (mm * b) if an == "ventriculomegaly" else 0.1  # half-width (units of b)
        half_res["atr"] = _oval(u2, av2, -0.36, 0.4 + max(0.0, atr_w - 0.1), 0.27, atr_w)
        half_res["chor"] = _oval(u2, av2, -0.4, 0.4, 0.16, 0.055)
    # skull thickness and brightness vary smoothly around the head (harmonics of the angle);
    # bone is brightest where its normal faces the beam (|n . beam|^4, lateral drop-out)
    pv2 = pv[crop2]
    pu2 = pu[crop2]
    k1, k2 = c1[crop2], s1[crop2]
    k1b, k2b = c2[crop2], s2[crop2]
    hk = [[float(x) for x in row] for row in pat["skull_h"]]
    half_res["thick"] = t * (1.0 + 0.25 * (hk[0][0] * k1 + hk[0][1] * k2) + 0.2 * (hk[1][0] * k1b + hk[1][1] * k2b))
    nx = pu2 * np.float32(ca / a) - pv2 * np.float32(sa / b)
    ny = pu2 * np.float32(sa / a) + pv2 * np.float32(ca / b)
    bx, by = geo.beam[0][:, ::2][:, crop2[1]], geo.beam[1][:, ::2][:, crop2[1]]
    facing = (nx * bx + ny * by) ** 2 / (nx * nx + ny * ny + 1e-12)
    f4 = facing * facing
    echo = pat["bone_echo"] * (1.0 + 0.3 * (hk[2][0] * k1b + hk[2][1] * k2b))
    half_res["bone_gain"] = (0.02 + 0.98 * f4 * f4) * echo * half_res.pop("bone_tex")
    # CSP: a soft-edged fluid box on the midline anterior to the thalami (a superellipse)
    qu, qv = (u2 - pat["csp_u"]) * (1.0 / pat["csp_len"]), pv2 * (1.0 / pat["csp_w"])
    qu2, qv2 = qu * qu, qv * qv
    half_res["csp"] = _ramp(1.0 - (qu2 * qu2 + qv2 * qv2), 0.2)
    if an == "banana_cerebellum":  # Chiari II: a small arc round the brainstem, no cisterna magna
        tcd = 2.0 * (AN.CB_V * pat["ratio"] + cr)
        half_res["cb"] = AN.banana(u2, pv2, sev, pat["ratio"], AN.CB_U + cr, tcd).astype(np.float32)
        half_res["cb_rim"] = AN.banana(u2, pv2, sev, pat["ratio"], AN.CB_U + cr, tcd, soft=0.09).astype(np.float32)
        half_res["cm"] = np.zeros_like(half_res["cm"])
    elif an == "enlarged_cm":  # Dandy-Walker: hemispheres apart and forward, a deep cisterna magna
        cb, cm = AN.dandy_walker(u2, pv2, sev / (mm * a), pat["ratio"], cr, t)
        half_res["cb"], half_res["cm"] = cb.astype(np.float32), cm.astype(np.float32)
        half_res["cb_rim"] = np.maximum(half_res["cb"], 0.0)
        half_res["vermis"] = np.zeros_like(half_res["vermis"])
    L = {}
    for k, arr in half_res.items():
        L[k] = cv2.resize(arr, (arr.shape[1] * 2, arr.shape[0] * 2), interpolation=cv2.INTER_LINEAR)[: size[0], : size[1]]
    L["th_rim"] = L["th_rim"] * (1.0 - L["th_rim"]) * (4.0 * (1.0 - L["th"]))
    L["cb_rim"] = L["cb_rim"] * (1.0 - L["cb_rim"]) * (4.0 * (1.0 - L["cb"]))
    L["cm"] = L["cm"] * (1.0 - L["cb"])
    L["ins"] = L["ins"] * (1.0 - L["ins"]) * 4.0

    # thin structures at full resolution: skull, midline, CSP walls
    dx, dy = geo.xs[crop] - np.float32(cx), geo.ys[crop] - np.float32(cy)
    pus = dx * np.float32(ca / a) + dy * np.float32(sa / a)
    pvs = dy * np.float32(ca / b) - dx * np.float32(sa / b)
    rc = np.sqrt(pus * pus + pvs * pvs)
    if an == "lemon":
        rc = rc / AN.lemon_radius(pus * pat["front"], pvs, sev, pat["ratio"]).astype(np.float32)
    u = pus * pat["front"]
    v = pvs
    # skull: a band around rho = 1 (thickness and brightness from the smooth layers above)
    thick = L["thick"]
    skull = _bump((rc - 1.0) / thick)
    bone = skull * L["bone_gain"]
    inside = _ramp((1.0 - thick) - rc, 1.0 / b + 0.004)
    # CSP walls: two thin parallel echoes (the leaves of the septum pellucidum) along the box
    cu, cl, cwid = pat["csp_u"], pat["csp_len"], pat["csp_w"]
    aqu, aqv = np.abs((u - cu) * (1.0 / cl)), np.abs(v * (1.0 / cwid))
    csp_wall = _bump((aqv - 1.12) * (1.0 / 0.28)) * _ramp(1.0 - aqu, 0.15)
    # midline echo (falx), interrupted here and there, and by the CSP
    lw = (0.6 + 0.0035 * w) / b
    mid = _bump(v * (1.0 / lw)) * _ramp(0.9 - np.abs(u), 0.03) * L["gap"]
    mid_gap = mid * (1.0 - _ramp(np.maximum(aqu, aqv) - 1.25, 0.15))  # the part the CSP interrupts
    L.update({"crop": crop, "rho": rc, "back": back, "skull": skull, "bone": bone, "inside": inside,
              "mid": mid, "mid_gap": mid_gap, "csp_wall": csp_wall})
    return L


def _attenuation(lat: dict, L: dict, geo: Geometry) -> np.ndarray:
    """Gain map: posterior shadowing exp(-k * cumsum(bone)) along each ray (rows), depth
    attenuation exp(-a * depth) with the operator's time-gain compensation (three smooth
    sliders), and lateral fall-off towards the sector edges."""
    d = geo.depth
    tg = lat["tgc"]
    tgc = tg[0] * np.cos(math.pi * d) + tg[1] * np.cos(2 * math.pi * d) + tg[2] * np.cos(3 * math.pi * d)
    att = np.exp(tgc - lat["atten"] * d) * (1.0 - 0.35 * geo.lateral**2)
    gm = np.broadcast_to(att, L["back"].shape).copy()
    r, c = L["crop"]
    if r.stop > r.start:
        # exp(-k * cumsum(bone)) as a running product of (1 - k * bone): no exp needed
        sh = np.cumprod(1.0 - np.minimum(L["bone"], 1.5) * (6.0 / geo.height), axis=0)
        gm[r, c] *= sh
        gm[r.stop:, c] *= sh[-1:]
        # reverberation between the probe and the near skull: a decaying echo train below
        # every bone crossing (a first-order recursive filter down each ray)
        L["reverb"] = lfilter([0.05], [1.0, -0.95], L["bone"], axis=0).astype(np.float32)
    return gm


def _head(pat: dict, lat: dict, L: dict, speck: np.ndarray, gm: np.ndarray) -> np.ndarray:
    """Echo amplitude inside the head's box for one latent parameter set."""
    r, c = L["crop"]
    inside = L["inside"]
    vis_th, vis_csp, vis_fp, vis_tv = lat["vis_th"], lat["vis_csp"], lat["vis_fp"], lat["vis_tv"]
    pb = pat["brain"] * LOOK["brain"]
    # diffuse scatterers (speckled)
    brain = pb * L["paren"]
    brain *= 1.0 - 0.85 * vis_th * L["th"]
    brain *= 1.0 - 0.9 * vis_csp * L["csp"]
    brain *= 1.0 - 0.85 * vis_fp * L["cm"]
    if vis_tv > 0:
        brain *= 1.0 - 0.75 * vis_tv * L["atr"]
    brain += (2.5 * pb * vis_fp) * L["cb"]
    brain += (LOOK["haze"] * lat["reverb"]) * L["reverb"]  # near-field haze
    diffuse = inside * brain + (1.0 - inside) * L["back"][r, c] * (1.0 - L["skull"])
    # specular reflectors (less speckled): skull, falx, CSP walls, insula, cerebellar rim,
    # vermis, choroid, sulci
    spec = LOOK["bone"] * L["bone"] + inside * (
        LOOK["falx"] * (L["mid"] - vis_csp * L["mid_gap"]) + (0.45 * vis_csp) * L["csp_wall"] + (0.1 * vis_th) * L["th_rim"]
        + 0.05 * L["ins"] + (0.3 * vis_fp) * L["vermis"] + (0.2 * vis_fp) * L["cb_rim"]
        + (LOOK["sulci"] * pat["sulci"]) * L["sul"]
    )
    if vis_tv > 0:
        spec += inside * ((0.6 * vis_tv) * L["chor"] * L["paren"])
    s = speck[r, c]
    glint = np.maximum(s - 1.75, 0.0)  # sparse bright echoes inside the brain (small vessels)
    spec = spec + (LOOK["glint"] * pb) * (inside * (1.0 - vis_th * L["th"])) * glint
    return (diffuse * s + spec * (0.5 + 0.5 * s)) * gm[r, c]


def _lut(lat: dict, levels: int) -> np.ndarray:
    """Display map of linear echo amplitude (index = amplitude * levels / 2): gain, log
    compression over a DYNAMIC_RANGE_DB dynamic range (white at amplitude 2), and the
    contrast fault's haze (lifted floor, flattened contrast)."""
    x = np.arange(levels + 1, dtype=np.float64) * (2.0 / levels) * math.exp(lat["gain"] + LOOK["gain"])
    y = 1.0 + (20.0 / DYNAMIC_RANGE_DB) * np.log10(np.maximum(x, 1e-6) / 2.0)
    c = lat["contrast"]
    if c > 0.02:
        y = FAULT_LOOK["haze"] * c + y * (1.0 - FAULT_LOOK["flatten"] * c)
    return (np.clip(y, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _display(amp: np.ndarray, lat: dict, geo: Geometry, noise: np.ndarray) -> np.ndarray:
    """Faults on the linear amplitude (defocus blur, electronic noise), scan conversion,
    then the display LUT. Returns uint8 canvas, 0 outside the sector."""
    if lat["blur"] > 0.02:
        s = lat["blur"] * FAULT_LOOK["blur"] * geo.height
        amp = _box_blur(amp, 0.6 * s, s)
    # the receiver's noise floor (anechoic fluid is dark grey, not black), and the noise
    # fault's additive (positive) clutter: haze and grain
    amp = amp + (NOISE_FLOOR + (lat["noise"] * FAULT_LOOK["noise"] if lat["noise"] > 0.02 else 0.0)) * noise
    levels = 2048
    idx = amp * (levels / 2.0)
    np.clip(idx, 0, levels, out=idx)
    return scan_convert(_lut(lat, levels)[idx.astype(np.int32)], geo)


def _mask(lat: dict, L: dict, geo: Geometry) -> np.ndarray:
    """Class-index mask (uint8, canvas) of the structures visible in ``lat``."""
    m = np.zeros(L["back"].shape, dtype=np.uint8)
    r, c = L["crop"]
    mc = (L["rho"] < 1.0).astype(np.uint8)  # head
    mc[L["skull"] > 0.44] = BONE  # |rho - 1| < t
    inside = L["inside"] > 0.5
    if lat["vis_th"] >= 0.5:
        mc[(L["th"] > 0.5) & inside] = TH
    if lat["vis_csp"] >= 0.5:
        mc[(L["csp"] > 0.5) & inside] = CSP
    if lat["vis_fp"] >= 0.5:
        mc[((L["cb"] > 0.5) | (L["cm"] > 0.5)) & inside] = FP
    m[r, c] = mc
    return scan_convert(m, geo, nearest=True)


def render_frame(
    index: int,
    size: tuple[int, int] | list[int] = (224, 288),
    seed: int = 0,
    sp_fraction: float = 0.152,
    frames_per_patient: int = 4,
    with_target: bool = True,
    anomaly: str | None = None,
    severity: float | None = None,
) -> dict:
    """Render frame ``index`` at ``size`` = [height, width], normal or (``anomaly``, a name of
    :data:`diffice.data.anomalies.ANOMALIES`, at ``severity``, default its default) abnormal:
    the same patient, pose, faults and speckle with the anomaly's anatomy (image, target and mask).

    Returns ``image`` and ``target`` (uint8 HxW, 0..255; target None if not asked for),
    ``mask`` (uint8 HxW class indices), ``concepts`` (dict of floats in [0, 1]), ``quality``
    (mean concept), ``label`` (1 SP, 0 NSP), ``patient`` (int), ``id`` (str), ``faults`` (list),
    ``plane`` (index into :data:`PLANES`), ``ga`` (gestational age in weeks) and ``latents`` (dict: patient, frame, good).
    """
    height, width = int(size[0]), int(size[1])
    fr = sample_frame(index, seed, sp_fraction, frames_per_patient)
    pat = sample_patient(seed, fr["patient"])
    geo = geometry(height, width, int(fr["actual"]["fov"]))
    nr, npx = geo.xs.shape
    speckles, textures = speckle_bank(nr, npx, smooth=SPECKLE_SMOOTH)
    act, good = fr["actual"], fr["good"]
    spec = None
    if anomaly:
        an, sev = AN.anomaly(anomaly, severity)
        if not eligible(an.name, act):
            raise ValueError(f"frame {index} (seed {seed}) does not show what {an.name} changes (see eligible())")
        spec = {"name": an.name, "severity": sev, "ga": ga_weeks(seed, fr["patient"])}
        act, good, pat = dict(act), dict(good), dict(pat)
        if an.name == "absent_csp":
            if sev >= 0.999:
                act["vis_csp"] = good["vis_csp"] = 0.0
            else:
                pat["csp_len"] *= math.sqrt(1.0 - sev)
                pat["csp_w"] *= math.sqrt(1.0 - sev)
    q = act["speckle"]
    k = int(q[0] * len(speckles))
    speck = np.roll(speckles[k], (int(q[1] * nr), int(q[2] * npx)), axis=(0, 1))
    tex = np.roll(textures[k], (int(q[2] * nr) // 2, int(q[1] * npx) // 2), axis=(0, 1))
    noise = np.roll(speckles[(k + 1) % len(speckles)], int(q[3] * nr), axis=0)
    L = _layers(pat, act, geo, tex, spec)
    gm = _attenuation(act, L, geo)
    base = L["back"] * speck * gm  # everything outside the head's box
    r, c = L["crop"]

    def amplitude(lat: dict) -> np.ndarray:
        amp = base.copy()
        amp[r, c] = _head(pat, lat, L, speck, gm)
        return amp

    image = _display(amplitude(act), act, geo, noise)
    target = None
    if with_target:
        target = image if not fr["faults"] else _display(amplitude(good), good, geo, noise)
    concepts = concepts_of(act)
    label = label_of(concepts)
    assert spec is not None or label == int(fr["sp"]), "sampler margins violated"
    return {
        "image": image,
        "target": target,
        "mask": _mask(act, L, geo),
        "concepts": concepts,
        "quality": float(np.mean(list(concepts.values()))),
        "label": label,
        "patient": fr["patient"],
        "id": f"phantom_s{seed}_{index:06d}",
        "faults": [str(f) for f in fr["faults"]],
        "plane": plane_of(fr["faults"]),
        "ga": ga_weeks(seed, fr["patient"]),
        "latents": {"patient": dict(pat), "frame": act, "good": good},
        "anomaly": spec["name"] if spec else "",
        "severity": spec["severity"] if spec else None,
    }


def eligible(name: str, lat: dict) -> bool:
    """Whether a frame with latents ``lat`` shows what anomaly ``name`` changes (the cavum for
    absent_csp, the fossa posterior for the cerebellar ones, the atrium for ventriculomegaly)."""
    if name == "absent_csp":
        return lat["vis_csp"] >= 0.5
    if name in ("banana_cerebellum", "enlarged_cm"):
        return lat["vis_fp"] >= 0.5
    if name == "ventriculomegaly":
        return lat["vis_tv"] >= 0.5
    if name == "lemon":  # the whole head, and a structure that tells its front (as a layout needs)
        return lat["cut"] == 0.0 and (lat["vis_csp"] >= 0.5 or lat["vis_fp"] >= 0.5)
    return lat["cut"] == 0.0  # microcephaly: the whole head in the frame
