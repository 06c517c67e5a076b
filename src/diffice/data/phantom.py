"""A procedural fetal-head ultrasound simulator with ground truth.

Every frame is rendered in the probe's own polar grid (rows = depth along the beam, columns =
beam angle) and scan-converted to a convex-probe sector on a ``[height, width]`` canvas, black
outside the sector. That makes the physics cheap and axis-aligned:

* speckle: complex Gaussian scatterers convolved with an anisotropic point-spread function
  (short along the beam, wide across it, widening with depth), then the envelope ``|.|``
  (Rayleigh statistics). A small bank of periodic speckle fields is made once per size and
  every frame takes one at a random circular shift, so a frame costs no convolution;
* depth attenuation ``exp(-a * depth)``; posterior shadowing ``exp(-k * cumsum(bone))`` along
  every ray; a skull that is brightest where its normal faces the beam (``|n . b|^2``);
* anatomy on the ellipse of the head (``u`` along the occipito-frontal axis, ``v`` across):
  anechoic amniotic fluid around the head, bright skull, midline echo (falx), paired
  hypoechoic thalami (TH), the cavum septi pellucidi (CSP) anterior to them, and — when the
  plane tilts towards the trans-cerebellar plane — the fossa posterior (FP: cerebellar
  hemispheres and the anechoic cisterna magna). A tilt towards the trans-ventricular plane
  hides the thalami and shows the atrium of the lateral ventricle with its choroid plexus.
* acquisition faults: defocus blur, bad gain / contrast, electronic noise (they lower the bone
  boundary sharpness ``qs_bone``), the head partly outside the sector (a nuisance that keeps
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

import numpy as np
from scipy import ndimage

CLASSES = ("background", "head", "bone", "th", "csp", "fp")
CONCEPTS = ("qs_th", "qs_csp", "qs_fp", "qs_bone")
BG, HEAD, BONE, TH, CSP, FP = range(6)

# Concept margins used by the sampler (see module docstring).
GOOD_MIN = 0.75
BAD_MAX = 0.3
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0

# NSP fault kinds and their relative frequencies.
FAULTS = ("cerebellar", "ventricular", "no_csp", "blur", "contrast", "noise")
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
    depth: np.ndarray  # (Nr, 1) depth below the probe surface, in [0, 1]
    beam: tuple[np.ndarray, np.ndarray]  # (1, Np) unit beam direction (bx, by)
    lateral: np.ndarray  # (1, Np) |angle| / half-angle, in [0, 1]
    idx: np.ndarray  # (4, H*W) flat polar indices for bilinear scan conversion
    wts: np.ndarray  # (4, H*W) weights
    nearest: np.ndarray  # (H*W,) flat polar index for masks
    inside: np.ndarray  # (H, W) bool: pixel inside the sector


@functools.lru_cache(maxsize=16)
def geometry(height: int, width: int) -> Geometry:
    h, w = float(height), float(width)
    r0 = 0.32 * h  # probe-surface radius
    depth = 0.97 * h  # imaging depth
    r1 = r0 + depth
    half = math.asin(min(0.99, 0.5 * w * 0.98 / r1))  # half-angle: the deep arc spans the width
    ax, ay = 0.5 * w, 0.02 * h - r0  # apex (virtual, above the canvas)
    nr, npx = height, width
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
    fr = np.clip((r - r0) / depth * nr - 0.5, 0, nr - 1).ravel()
    fp = np.clip((phi + half) / (2 * half) * npx - 0.5, 0, npx - 1).ravel()
    r_lo = np.minimum(np.floor(fr).astype(np.int64), nr - 2 if nr > 1 else 0)
    p_lo = np.minimum(np.floor(fp).astype(np.int64), npx - 2 if npx > 1 else 0)
    tr, tp = fr - r_lo, fp - p_lo
    r_hi, p_hi = np.minimum(r_lo + 1, nr - 1), np.minimum(p_lo + 1, npx - 1)
    idx = np.stack([r_lo * npx + p_lo, r_lo * npx + p_hi, r_hi * npx + p_lo, r_hi * npx + p_hi])
    wts = np.stack([(1 - tr) * (1 - tp), (1 - tr) * tp, tr * (1 - tp), tr * tp]).astype(np.float32)
    wts *= inside.ravel()[None, :]
    nearest = np.rint(fr).astype(np.int64) * npx + np.rint(fp).astype(np.int64)
    return Geometry(
        height=height,
        width=width,
        xs=xs,
        ys=ys,
        depth=((rr - r0) / depth)[:, None].astype(np.float32),
        beam=(sin_p.astype(np.float32), cos_p.astype(np.float32)),
        lateral=(np.abs(pp) / half)[None, :].astype(np.float32),
        idx=idx,
        wts=wts,
        nearest=nearest,
        inside=inside,
    )


def scan_convert(polar: np.ndarray, geo: Geometry) -> np.ndarray:
    """Bilinear polar -> canvas; black (0) outside the sector. Float in, float out."""
    flat = polar.ravel()
    out = flat[geo.idx[0]] * geo.wts[0]
    out += flat[geo.idx[1]] * geo.wts[1]
    out += flat[geo.idx[2]] * geo.wts[2]
    out += flat[geo.idx[3]] * geo.wts[3]
    return out.reshape(geo.height, geo.width)


@functools.lru_cache(maxsize=16)
def speckle_bank(height: int, width: int, count: int = 12, seed: int = 20240) -> np.ndarray:
    """``count`` periodic unit-mean speckle envelopes in the polar grid, shape (count, Nr, Np).

    Complex Gaussian scatterers convolved (wrap mode, so any circular shift is seamless) with
    a Gaussian PSF of axial sigma ~0.35 % of the depth and lateral sigma growing from ~0.5 % to
    ~1.1 % of the width with depth (beam spreading), then the envelope.
    """
    rng = _rng(seed, height, width)
    sa = max(0.5, 0.0035 * height * 1.4)
    sl_near, sl_far = max(0.6, 0.005 * width * 1.4), max(0.9, 0.011 * width * 1.4)
    depth = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height
    mix = np.clip(depth * 1.2, 0, 1)
    bank = np.empty((count, height, width), dtype=np.float32)
    for k in range(count):
        z = rng.standard_normal((2, height, width)).astype(np.float32)
        env2 = 0.0
        for part in z:
            a = ndimage.gaussian_filter1d(part, sa, axis=0, mode="wrap")
            near = ndimage.gaussian_filter1d(a, sl_near, axis=1, mode="wrap")
            far = ndimage.gaussian_filter1d(a, sl_far, axis=1, mode="wrap")
            near /= near.std() + 1e-8
            far /= far.std() + 1e-8
            env2 = env2 + ((1 - mix) * near + mix * far) ** 2
        env = np.sqrt(env2)
        bank[k] = env / env.mean()
    return bank


# ----------------------------------------------------------------------------- latents


def is_sp(index: int, seed: int, sp_fraction: float) -> bool:
    """Class of frame ``index``: a golden-ratio sequence, so every stretch of frames holds
    close to ``sp_fraction`` standard planes whatever the count."""
    offset = _rng(seed, 7).random()
    return ((index + 0.5) * GOLDEN + offset) % 1.0 < sp_fraction


def sample_patient(seed: int, patient: int) -> dict:
    """Anatomy shared by every frame of a patient (sizes relative to the canvas)."""
    g = _rng(seed, 1, patient)
    return {
        "a": g.uniform(0.30, 0.37),  # occipito-frontal semi-axis / width
        "ratio": g.uniform(0.74, 0.84),  # biparietal / occipito-frontal
        "angle": g.uniform(-20, 20),  # head rotation in degrees
        "front": float(g.choice([-1.0, 1.0])),  # which end of the u axis is frontal
        "skull": g.uniform(0.030, 0.045),  # skull thickness / semi-axis
        "brain": g.uniform(0.16, 0.24),  # parenchyma echogenicity
        "tissue": g.uniform(0.30, 0.45),  # maternal / fetal-body tissue echogenicity
        "fluid": g.uniform(0.10, 0.30),  # width of the fluid rim around the head (relative)
        "fluid_h": g.uniform(-1, 1, size=(3, 2)),  # fluid-boundary harmonics
        "th_u": g.uniform(-0.04, 0.06),
        "th_v": g.uniform(0.14, 0.19),
        "th_r": g.uniform(0.17, 0.21),
        "csp_u": g.uniform(0.34, 0.42),
        "csp_len": g.uniform(0.13, 0.17),
        "csp_w": g.uniform(0.07, 0.09),
        "cb_r": g.uniform(0.16, 0.19),
        "wall": g.uniform(0.10, 0.18),  # maternal abdominal wall thickness (depth fraction)
    }


def sample_frame(index: int, seed: int = 0, sp_fraction: float = 0.152, frames_per_patient: int = 4) -> dict:
    """All latent parameters of frame ``index``: ``good`` (an SP) and ``actual`` (the frame)."""
    patient = index // max(1, frames_per_patient)
    g = _rng(seed, 2, index)
    good = {
        "dx": g.uniform(-0.05, 0.05),  # head centre offset / width
        "dy": g.uniform(-0.04, 0.05),  # head centre offset / height
        "dangle": g.uniform(-8, 8),
        "scale": g.uniform(0.93, 1.05),
        "vis_th": g.uniform(0.8, 1.0),
        "vis_csp": g.uniform(0.8, 1.0),
        "vis_fp": g.uniform(0.0, 0.12),
        "vis_tv": 0.0,
        "blur": g.uniform(0.0, 0.15),  # severities in [0, 1]
        "contrast": g.uniform(0.0, 0.15),
        "noise": g.uniform(0.0, 0.15),
        "gain": g.uniform(-0.1, 0.1),  # log gain
        "atten": g.uniform(0.5, 1.1),
        "speckle": int(g.integers(1 << 30)),
        "cut": 0.0,
    }
    # head partly outside the sector: a nuisance, same in image and target
    if g.random() < 0.12:
        side = g.choice([-1.0, 1.0])
        good["dx"] = side * g.uniform(0.12, 0.2)
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


def _smooth_step(x: np.ndarray, width: float) -> np.ndarray:
    """0 for x <= -width, 1 for x >= width, linear in between (soft edges)."""
    return np.clip(0.5 + x / (2 * width), 0.0, 1.0)


def _layers(pat: dict, lat: dict, geo: Geometry) -> dict:
    """Anatomy layers in the polar grid that the visibilities and faults then combine."""
    h, w = geo.height, geo.width
    a = pat["a"] * w * lat["scale"]
    b = a * pat["ratio"]
    cx = w * (0.5 + lat["dx"])
    cy = h * (0.55 + lat["dy"])
    ang = math.radians(pat["angle"] + lat["dangle"])
    ca, sa = math.cos(ang), math.sin(ang)
    dx, dy = geo.xs - cx, geo.ys - cy
    pu = (dx * ca + dy * sa) / a  # along the occipito-frontal axis, unit = a
    pv = (-dx * sa + dy * ca) / b
    u = pu * pat["front"]  # +u is frontal
    rho = np.sqrt(pu * pu + pv * pv)
    px = 1.0 / b  # one canvas pixel in units of b (≈ radial units)
    edge = 0.9 * px + 0.004

    # skull: a band around rho = 1; brightest where its normal faces the beam
    t = pat["skull"]
    d = (rho - 1.0) / t
    skull = np.exp(-(d * d))
    nx = pu / a * ca - pv / b * sa
    ny = pu / a * sa + pv / b * ca
    facing = np.abs(nx * geo.beam[0] + ny * geo.beam[1]) / (np.sqrt(nx * nx + ny * ny) + 1e-6)
    bone = skull * (0.25 + 0.75 * facing * facing)
    inside = _smooth_step(1.0 - t - rho, edge)  # brain region (inside the skull)

    # fluid rim around the head with a wobbly outer boundary, tissue beyond it
    theta = np.arctan2(pv, pu)
    hmx = pat["fluid_h"]
    wobble = sum(hmx[k, 0] * np.cos((k + 1) * theta) + hmx[k, 1] * np.sin((k + 1) * theta) for k in range(3))
    rim = 1.0 + pat["fluid"] * (1.0 + 0.5 * wobble)
    tissue = _smooth_step(rho - rim, 0.05)
    wall = _smooth_step(pat["wall"] - geo.depth, 0.02)  # maternal abdominal wall near the probe
    layers = 0.75 + 0.25 * np.cos(geo.depth * 90.0)  # layered texture of the wall
    back = np.maximum(tissue * pat["tissue"], wall * (pat["tissue"] + 0.15) * layers)

    # midline echo (falx), interrupted by the CSP
    mid = np.exp(-((pv * b) ** 2) / (0.8 + 0.004 * w) ** 2) * _smooth_step(0.92 - np.abs(u), 0.02)

    # thalami: paired hypoechoic ovals either side of the midline
    def oval(u0, v0, ru, rv):
        q = ((u - u0) / ru) ** 2 + ((pv - v0) / rv) ** 2
        return _smooth_step(1.0 - q, 0.25)

    th_ru, th_rv = pat["th_r"], pat["th_r"] * 0.7 * a / b
    th = np.maximum(oval(pat["th_u"], pat["th_v"], th_ru, th_rv), oval(pat["th_u"], -pat["th_v"], th_ru, th_rv))

    # CSP: anechoic box on the midline, anterior to the thalami, with bright walls
    cu, cl, cw = pat["csp_u"], pat["csp_len"], pat["csp_w"]
    qb = np.maximum(np.abs(u - cu) / cl, np.abs(pv) / cw)
    csp = _smooth_step(1.0 - qb, 0.12)
    csp_wall = np.exp(-(((qb - 1.05) / 0.18) ** 2)) * (np.abs(u - cu) < cl * 1.1)
    mid = mid * (1.0 - _smooth_step(1.2 - qb, 0.2))

    # fossa posterior: cerebellar hemispheres + anechoic cisterna magna behind them
    cr = pat["cb_r"]
    cb = np.maximum(oval(-0.58, 0.15, cr, cr * a / b), oval(-0.58, -0.15, cr, cr * a / b))
    cm = oval(-0.84, 0.0, 0.09, 0.32) * (1.0 - cb)

    # trans-ventricular cue: atrium of the lateral ventricle with its choroid plexus
    atr = np.maximum(oval(-0.35, 0.42, 0.26, 0.09), oval(-0.35, -0.42, 0.26, 0.09))
    chor = np.maximum(oval(-0.38, 0.42, 0.15, 0.05), oval(-0.38, -0.42, 0.15, 0.05))

    return {
        "bone": bone,
        "inside": inside,
        "back": back,
        "mid": mid,
        "th": th,
        "csp": csp,
        "csp_wall": csp_wall,
        "cb": cb,
        "cm": cm,
        "atr": atr,
        "chor": chor,
        "rho": rho,
        "skull": skull,
        "u": u,
        "v": pv,
        "t": t,
    }


def _compose(pat: dict, lat: dict, L: dict, geo: Geometry, speck: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Echo image in [0, 1] (polar grid) from the layers and one latent parameter set."""
    inside = L["inside"]
    brain = pat["brain"]
    vis_th, vis_csp, vis_fp, vis_tv = lat["vis_th"], lat["vis_csp"], lat["vis_fp"], lat["vis_tv"]
    # diffuse scatterers (speckled): brain parenchyma, structures, tissue
    tissue = brain * (1.0 - 0.75 * vis_th * L["th"]) * (1.0 - 0.9 * vis_csp * L["csp"])
    tissue = tissue * (1.0 - 0.85 * vis_fp * L["cm"]) + vis_fp * L["cb"] * 0.22
    tissue = tissue * (1.0 - 0.8 * vis_tv * L["atr"])
    diffuse = inside * tissue + (1.0 - inside) * L["back"] * (1.0 - L["skull"])
    # specular reflectors (less speckled): skull, falx, CSP walls, cerebellar rim, choroid plexus
    spec = 1.6 * L["bone"] + inside * (
        0.45 * L["mid"]
        + 0.5 * vis_csp * L["csp_wall"]
        + 0.35 * vis_tv * L["chor"]
        + 0.25 * vis_fp * L["cb"] * (1.0 - L["cb"]) * 4.0
    )
    img = diffuse * speck + spec * (0.55 + 0.45 * speck)
    # posterior shadowing behind the skull, depth attenuation, lateral fall-off
    shadow = np.exp(-np.cumsum(L["bone"], axis=0) * (3.0 / geo.height) * 3.0)
    img = img * shadow * np.exp(-lat["atten"] * geo.depth) * (1.0 - 0.25 * geo.lateral**2)
    # faults: defocus blur, electronic noise, gain / contrast
    if lat["blur"] > 0.02:
        s = lat["blur"] * 0.03 * geo.height
        img = ndimage.gaussian_filter(img, (0.6 * s, s), mode="nearest")
    if lat["noise"] > 0.02:
        img = img + lat["noise"] * 0.35 * noise
    img = img * math.exp(lat["gain"])
    img = np.log1p(6.0 * np.maximum(img, 0.0)) / math.log1p(6.0 * 1.4)  # log compression
    c = lat["contrast"]
    if c > 0.02:
        img = 0.35 * c + img * (1.0 - 0.7 * c)  # haze: lifted floor, flattened contrast
    return img


def _mask(pat: dict, lat: dict, L: dict, geo: Geometry) -> np.ndarray:
    """Class-index mask (uint8, canvas) of the structures visible in ``lat``."""
    m = np.zeros(L["rho"].shape, dtype=np.uint8)
    m[L["rho"] < 1.0] = HEAD
    m[L["skull"] > 0.37] = BONE  # |rho - 1| < t
    if lat["vis_th"] >= 0.5:
        m[L["th"] > 0.5] = TH
    if lat["vis_csp"] >= 0.5:
        m[L["csp"] > 0.5] = CSP
    if lat["vis_fp"] >= 0.5:
        m[(L["cb"] > 0.5) | (L["cm"] > 0.5)] = FP
    out = m.ravel()[geo.nearest].reshape(geo.height, geo.width)
    out[~geo.inside] = BG
    return out


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_frame(
    index: int,
    size: tuple[int, int] | list[int] = (224, 288),
    seed: int = 0,
    sp_fraction: float = 0.152,
    frames_per_patient: int = 4,
    with_target: bool = True,
) -> dict:
    """Render frame ``index`` at ``size`` = [height, width].

    Returns ``image`` and ``target`` (uint8 HxW, 0..255), ``mask`` (uint8 HxW class indices),
    ``concepts`` (dict of floats in [0, 1]), ``quality`` (mean concept), ``label`` (1 SP, 0 NSP),
    ``patient`` (int), ``id`` (str), ``faults`` (list) and ``latents`` (dict).
    """
    height, width = int(size[0]), int(size[1])
    fr = sample_frame(index, seed, sp_fraction, frames_per_patient)
    pat = sample_patient(seed, fr["patient"])
    geo = geometry(height, width)
    bank = speckle_bank(height, width)
    g = _rng(fr["actual"]["speckle"])
    k = int(g.integers(len(bank)))
    speck = np.roll(bank[k], (int(g.integers(height)), int(g.integers(width))), axis=(0, 1))
    if g.random() < 0.5:
        speck = speck[:, ::-1]
    noise = np.roll(bank[(k + 1) % len(bank)], int(g.integers(height)), axis=0) - 1.0
    act, good = fr["actual"], fr["good"]
    L = _layers(pat, act, geo)
    image = _to_uint8(scan_convert(_compose(pat, act, L, geo, speck, noise), geo))
    if with_target:
        target = image if not fr["faults"] else _to_uint8(scan_convert(_compose(pat, good, L, geo, speck, noise), geo))
    else:
        target = None
    concepts = concepts_of(act)
    label = label_of(concepts)
    assert label == int(fr["sp"]), "sampler margins violated"
    return {
        "image": image,
        "target": target,
        "mask": _mask(pat, act, L, geo),
        "concepts": concepts,
        "quality": float(np.mean(list(concepts.values()))),
        "label": label,
        "patient": fr["patient"],
        "id": f"phantom_s{seed}_{index:06d}",
        "faults": fr["faults"],
        "latents": {"patient": pat, "frame": act, "good": good},
    }
