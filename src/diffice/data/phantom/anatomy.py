"""The anatomy of a frame in head coordinates: the echogenicity, bone and structure layers of
amniotic fluid, tissue, skull, brain, falx, thalami, CSP, insula, ventricles and fossa posterior."""

from __future__ import annotations

import math

import cv2
import numpy as np

from diffice.data import anomalies as AN
from diffice.data.phantom.constants import LOOK, TISSUE_MOD
from diffice.data.phantom.geometry import Geometry


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


def box_blur(img: np.ndarray, sigma_r: float, sigma_c: float) -> np.ndarray:
    """Approximate Gaussian blur: two box passes (cost independent of sigma)."""
    kr = max(1, int(round(math.sqrt(6.0 * sigma_r * sigma_r + 1.0))))  # two boxes of this size ~ sigma
    kc = max(1, int(round(math.sqrt(6.0 * sigma_c * sigma_c + 1.0))))
    out = cv2.blur(img, (kc, kr), borderType=cv2.BORDER_REPLICATE)
    return cv2.blur(out, (kc, kr), borderType=cv2.BORDER_REPLICATE)


def _oval(u: np.ndarray, v: np.ndarray, u0: float, v0: float, ru: float, rv: float, soft: float = 0.25) -> np.ndarray:
    q = ((u - u0) * (1.0 / ru)) ** 2
    q += ((v - v0) * (1.0 / rv)) ** 2
    return _ramp(1.0 - q, soft)


def anatomy_layers(pat: dict, lat: dict, geo: Geometry, tex: np.ndarray, anomaly: dict | None = None) -> dict:
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
