"""Fetal brain anomalies: one definition shared by the phantom (which renders them, with masks)
and the synthesis layer (which draws them into a normal layout), and the measurement that
checks a frame against the requested severity.

Every anomaly lives in the head's own coordinates: ``u`` along the occipito-frontal axis in
units of the semi-axis ``a`` (+u frontal), ``v`` across it in units of the semi-axis ``b``;
the skull is at ``rho = sqrt(u^2 + v^2) = 1``. The phantom knows these coordinates; for a
layout (or a segmentation) :func:`head_frame` recovers them by fitting an ellipse to the bone
pixels and taking the frontal side from the cavum (anterior) or the fossa posterior
(posterior). So the same parameters give the same anatomy in a rendered frame and in an
edited layout (tested).

===================  ===============================================  =========================  ======================
name                 clinical finding it imitates                     severity (range, default)   measured (the check)
===================  ===============================================  =========================  ======================
absent_csp           absent cavum septi pellucidi (agenesis of the     fraction of the CSP area    CSP area
                     septum pellucidum / corpus callosum spectrum)     removed (0.5..1, 1)
ventriculomegaly     atrium of the lateral ventricle wider than 10 mm  atrium width in mm          phantom only (no
                     (trans-ventricular plane)                         (10..20, 15)                ventricle class)
banana_cerebellum    Chiari II: small, banana-shaped cerebellum        fraction the transverse     transverse extent of
                     wrapped round the brainstem, cisterna magna       cerebellar diameter         the fossa posterior
                     obliterated                                       shrinks (0.3..0.6, 0.45)
enlarged_cm          Dandy-Walker spectrum: cisterna magna deeper      cisterna magna depth in     area of the fossa
                     than 10 mm, vermis absent (hemispheres apart)     mm (10..15, 12)             posterior
microcephaly         head circumference far below the mean for the     fraction the head           head circumference
                     gestational age (< -3 SD is roughly 10-15 %)      circumference is short      (ellipse of the bone)
                                                                       of normal (0.1..0.35, 0.2)
lemon                lemon sign: scalloped (flattened, concave)        inward shift of the         frontal outline inside
                     frontal bones (spina bifida)                      frontal bones, fraction of  the posterior one / a
                                                                       a (0.08..0.2, 0.12)
===================  ===============================================  =========================  ======================

The measurements are made in pixels on class masks (a layout, the phantom's mask, or a
segmenter's output), so "the sample shows the requested anomaly" is checked by measuring the
judge's segmentation of the sample and the requested (edited) layout the same way;
``TOLERANCE`` says how close counts (``docs/synthesis.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from diffice.errors import UserError

BG, HEAD, BONE, TH, CSP, FP = range(6)


@dataclass(frozen=True)
class Anomaly:
    name: str
    finding: str
    lo: float
    hi: float
    default: float
    unit: str
    needs: tuple[str, ...]  # structures the layout must show


ANOMALIES: dict[str, Anomaly] = {a.name: a for a in (
    Anomaly("absent_csp", "absent cavum septi pellucidi", 0.5, 1.0, 1.0, "fraction of the CSP removed", ("csp",)),
    Anomaly("ventriculomegaly", "atrium of the lateral ventricle > 10 mm", 10.0, 20.0, 15.0, "atrium width, mm", ("lateral ventricle",)),
    Anomaly("banana_cerebellum", "small banana-shaped cerebellum, cisterna magna obliterated (Chiari II)", 0.3, 0.6, 0.45,
            "fraction the transverse cerebellar diameter shrinks", ("fp",)),
    Anomaly("enlarged_cm", "cisterna magna > 10 mm with absent vermis (Dandy-Walker spectrum)", 10.0, 15.0, 12.0,
            "cisterna magna depth, mm", ("fp",)),
    Anomaly("microcephaly", "small head for the gestational age", 0.1, 0.35, 0.2,
            "fraction the head circumference is short of normal", ("bone",)),
    Anomaly("lemon", "lemon sign: scalloped frontal bones", 0.08, 0.2, 0.12, "inward shift of the frontal bones / a", ("bone",)),
)}

# relative to the source's value (the absolute |measured - requested| allowed), or absolute
# for ``lemon`` (a fraction of the semi-axis); see docs/synthesis.md
TOLERANCE = {"absent_csp": 0.25, "banana_cerebellum": 0.15, "enlarged_cm": 0.2, "microcephaly": 0.06, "lemon": 0.035}

# cerebellum and brainstem in head coordinates (the phantom's normal anatomy)
CB_U, CB_V = -0.56, 0.14
LEMON_PHI, LEMON_WIDTH = math.radians(55.0), math.radians(22.0)


def anomaly(name: str, severity: float | None = None, where: str = "--anomaly") -> tuple[Anomaly, float]:
    """The anomaly called ``name`` and its severity (default if None); UserError naming a bad one."""
    key = str(name).strip().lower()
    if key not in ANOMALIES:
        raise UserError(f"{where}: unknown anomaly '{name}' (known: {', '.join(ANOMALIES)})")
    a = ANOMALIES[key]
    s = a.default if severity is None else float(severity)
    if not (a.lo <= s <= a.hi):
        raise UserError(f"{where}: severity {s:g} of {a.name} is outside {a.lo:g}..{a.hi:g} ({a.unit})")
    return a, s


# ----------------------------------------------------------------------------- scale


HADLOCK_GA_RANGE = (14.0, 42.0)  # weeks: the range Hadlock's HC regression was fitted on; outside it, an extrapolation


def _hadlock(hc_cm: float) -> float:
    """Hadlock's regression GA (weeks) = 8.96 + 0.540 HC + 0.0003 HC^3, HC in cm (Radiology 1984)."""
    return 8.96 + 0.540 * hc_cm + 0.0003 * hc_cm**3


def ga_weeks(hc_mm: float) -> float:
    """Gestational age in weeks of a head circumference in mm by Hadlock's regression (:func:`_hadlock`),
    NaN for a missing or non-positive HC. Fitted on :data:`HADLOCK_GA_RANGE`: a value outside it is an
    extrapolation."""
    hc = float(hc_mm) / 10.0
    if not math.isfinite(hc) or hc <= 0:
        return math.nan
    return _hadlock(hc)


def hc_mm(ga_weeks: float) -> float:
    """Mean head circumference in mm at a gestational age, from Hadlock's regression
    (:func:`ga_weeks`) solved for HC."""
    lo, hi = 5.0, 45.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _hadlock(mid) < ga_weeks:
            lo = mid
        else:
            hi = mid
    return 10.0 * 0.5 * (lo + hi)


def ellipse_perimeter(a: float, b: float) -> float:
    """Ramanujan's approximation of the perimeter of an ellipse with semi-axes a, b."""
    return math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))


def mm_per_pixel(a_px: float, b_px: float, ga_weeks: float) -> float:
    """Pixel spacing of a frame whose (normal) head has semi-axes a_px, b_px at ``ga_weeks``."""
    return hc_mm(ga_weeks) / ellipse_perimeter(a_px, b_px)


# ----------------------------------------------------------------------------- shapes (u, v head coordinates)


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    """1 inside (d < 0), 0 outside, linear over ``width`` around 0."""
    return np.clip(0.5 - d / (2.0 * width), 0.0, 1.0)


def lemon_radius(u: np.ndarray, v: np.ndarray, s: float, ratio: float) -> np.ndarray:
    """Skull radius factor R(phi) <= 1 of the lemon sign: the frontal bones pushed in by ``s``
    (a fraction of a) either side of the frontal pole, most at +-55 degrees from it."""
    phi = np.abs(np.arctan2(v * ratio, u))
    return 1.0 - s * np.exp(-(((phi - LEMON_PHI) / LEMON_WIDTH) ** 2))


def banana(u: np.ndarray, v: np.ndarray, s: float, ratio: float, u_front: float, tcd: float, soft: float = 0.03) -> np.ndarray:
    """Soft mask of a Chiari II cerebellum: an arc band (concave anteriorly, round the brainstem)
    whose transverse extent is (1 - s) x ``tcd`` (both in units of a), its midline part at the
    normal cerebellum's middle; ``u_front`` is the normal cerebellum's anterior edge."""
    x, y = u, v * ratio  # isotropic, units of a
    r0, th = 0.2, 0.12
    px = u_front - 0.02 + 0.0  # the brainstem, just anterior to the cerebellum
    half = max(0.5 * (1.0 - s) * tcd - 0.5 * th, 0.02)
    phi_max = math.asin(min(1.0, half / r0))
    dx, dy = x - px, y
    r = np.sqrt(dx * dx + dy * dy)
    phi = np.abs(np.arctan2(dy, -dx))  # 0 = straight posterior
    band = np.abs(r - r0) - 0.5 * th
    # beyond the arc's ends: distance to the end caps
    ex, ey = px - r0 * math.cos(phi_max), r0 * math.sin(phi_max)
    cap = np.sqrt((x - ex) ** 2 + (np.abs(y) - ey) ** 2) - 0.5 * th
    d = np.where(phi <= phi_max, band, cap)
    return _soft(d, soft)


def dandy_walker(u: np.ndarray, v: np.ndarray, depth: float, ratio: float, cr: float, skull: float, soft: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Soft masks (cerebellum, cisterna magna) of the Dandy-Walker spectrum: the hemispheres
    pushed apart (no vermis between them) and forwards so that the cisterna magna behind them
    is ``depth`` deep (units of a) up to the inner skull at u = -(1 - ``skull``); the cistern
    reaches forward between the hemispheres (the open fourth ventricle)."""
    x, y = u, np.abs(v * ratio)
    back = -(1.0 - skull)
    xp = back + depth  # the hemispheres' posterior edge
    cx = xp + cr
    cy = CB_V * ratio + 0.07
    cb = _soft(np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - cr, soft)
    ru = 0.5 * depth + 0.04
    cm = _soft(np.sqrt(((x - (back + 0.5 * depth)) / ru) ** 2 + (y / (cy + 0.5 * cr)) ** 2) - 1.0, soft / max(ru, 0.05))
    gap = _soft(np.maximum(np.abs(x - cx) - cr, y - 0.06), soft)
    return cb, np.maximum(cm, gap) * (1.0 - cb)


# ----------------------------------------------------------------------------- head frame of a mask


@dataclass
class HeadFrame:
    cx: float
    cy: float
    a: float
    b: float
    theta: float  # direction of the u axis (radians, image x right, y down), frontal side included

    def coords(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(u, v) maps of an image of ``shape``."""
        ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
        dx, dy = xs - self.cx, ys - self.cy
        c, s = math.cos(self.theta), math.sin(self.theta)
        return (dx * c + dy * s) / self.a, (dy * c - dx * s) / self.b

    def to_image(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.theta), math.sin(self.theta)
        pu, pv = u * self.a, v * self.b
        return self.cx + pu * c - pv * s, self.cy + pu * s + pv * c

    @property
    def ratio(self) -> float:
        return self.b / self.a


def fit_bone(mask: np.ndarray) -> tuple[float, float, float, float, float] | None:
    """Ellipse (cx, cy, a, b, major-axis angle in radians) through the bone pixels, or None."""
    ys, xs = np.nonzero(mask == BONE)
    if len(xs) < 12:
        return None
    (cx, cy), (w, h), ang = cv2.fitEllipse(np.stack([xs, ys], 1).astype(np.float32))
    if not (np.isfinite([cx, cy, w, h]).all() and min(w, h) > 2):
        return None
    theta = math.radians(ang)
    if w < h:
        theta += math.pi / 2
    return float(cx), float(cy), 0.5 * max(w, h), 0.5 * min(w, h), theta


def head_frame(mask: np.ndarray, where: str = "layout", need_front: bool = True) -> HeadFrame:
    """The head coordinates of a class mask; UserError naming ``where`` when its bone is too
    small to fit, or (``need_front``) neither the cavum nor the fossa posterior tells the front."""
    fit = fit_bone(mask)
    if fit is None:
        raise UserError(f"{where}: the layout shows too little skull (bone) to find the head's axes")
    cx, cy, a, b, theta = fit
    hf = HeadFrame(cx, cy, a, b, theta)
    u, _ = hf.coords(mask.shape)
    for cls, sign in ((CSP, 1.0), (FP, -1.0)):
        sel = mask == cls
        if sel.sum() >= 2:
            if float(u[sel].mean()) * sign < 0:
                hf.theta += math.pi
            return hf
    if need_front:
        raise UserError(f"{where}: the layout shows neither the cavum (csp) nor the fossa posterior (fp), "
                        "so the frontal side of the head is unknown")
    return hf


# ----------------------------------------------------------------------------- measurements


def _frame_or_none(mask: np.ndarray) -> HeadFrame | None:
    try:
        return head_frame(mask, need_front=False)
    except UserError:
        return None


WIDE = 4  # px: an anomaly whose changed structure is at least this wide is checked on its own (issue 25)


def changed_width(before: np.ndarray, after: np.ndarray) -> float:
    """How wide (px) the structure an edit changes is: the diameter of the largest disc inside the
    pixels whose class changed (2 x the largest Euclidean distance to an unchanged pixel, minus 1:
    a one-pixel line is 1 wide, a 3 x 3 block 3); 0 when nothing changed."""
    changed = np.asarray(before) != np.asarray(after)
    if not changed.any():
        return 0.0
    inside = ndimage.distance_transform_edt(np.pad(changed, 1))
    return float(2.0 * inside.max() - 1.0)


def measure(name: str, mask: np.ndarray, frame: HeadFrame | None = None) -> float:
    """The quantity an anomaly changes, measured on a class mask (pixels or a fraction; NaN
    when the mask lacks what it needs). ``frame``: the head coordinates to measure in (the
    source layout's, so that a sample and its request are measured alike); default: fitted."""
    mask = np.asarray(mask)
    if name == "absent_csp":
        return float((mask == CSP).sum())
    if name == "microcephaly":
        fit = fit_bone(mask)
        return ellipse_perimeter(fit[2], fit[3]) if fit else math.nan
    frame = frame or _frame_or_none(mask)
    if frame is None:
        return math.nan
    u, v = frame.coords(mask.shape)
    if name == "lemon":
        return frontal_shift(mask, u, v, frame.ratio)
    fp = mask == FP
    if fp.sum() < 2:
        return 0.0
    if name == "banana_cerebellum":  # transverse extent of the fossa posterior (pixels)
        y = v[fp] * frame.b
        return float(np.percentile(y, 99) - np.percentile(y, 1)) + 1.0
    if name == "enlarged_cm":  # area of the fossa posterior (pixels): the cistern and the hemispheres apart
        return float(fp.sum())
    raise UserError(f"anomaly '{name}': no measurement from a layout (it has no class for what it changes)")


def frontal_shift(mask: np.ndarray, u: np.ndarray, v: np.ndarray, ratio: float) -> float:
    """How far the head's outline lies inside its own posterior outline in the lemon sign's
    sectors (40..70 degrees either side of the frontal pole), in units of the semi-axis ``a``:
    the median elliptic radius of the outline's pixels behind the head (> 100 degrees) minus
    that in the frontal sectors. About 0 for a normal head; NaN without an outline there."""
    head = ndimage.binary_fill_holes(mask >= 1)
    edge = head & ~ndimage.binary_erosion(head)
    h, w = mask.shape
    edge[[0, -1], :] = False
    edge[:, [0, -1]] = False  # the frame's edge is not the skull
    rho = np.sqrt(u * u + v * v)
    phi = np.degrees(np.abs(np.arctan2(v * ratio, u)))
    front, back = edge & (phi >= 40) & (phi <= 70), edge & (phi >= 100)
    if front.sum() < 3 or back.sum() < 3:
        return math.nan
    return float(np.median(rho[back]) - np.median(rho[front]))


# ----------------------------------------------------------------------------- editing a layout


def disk(r: int) -> np.ndarray:
    """Boolean disk of radius ``r`` (a structuring element)."""
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


def _warp_radial(layout: np.ndarray, frame: HeadFrame, factor) -> np.ndarray:
    """Layout whose head is radially rescaled by ``factor(u, v)`` (<= 1) about the head's centre;
    what the head leaves becomes background."""
    u, v = frame.coords(layout.shape)
    f = factor(u, v)
    xs, ys = frame.to_image(u / f, v / f)  # where each new pixel comes from
    moved = cv2.remap(layout.astype(np.float32), xs.astype(np.float32), ys.astype(np.float32), cv2.INTER_NEAREST,
                      borderMode=cv2.BORDER_CONSTANT, borderValue=0.0).astype(np.int64)
    out = layout.copy()
    out[layout >= 1] = BG  # the old head goes, the rescaled one is drawn
    out[moved >= 1] = moved[moved >= 1]
    return out


def layout_shows(name: str, layout: np.ndarray) -> bool:
    """Whether ``layout`` has what anomaly ``name`` edits (used to pick a test set's frames)."""
    lay = np.asarray(layout)
    if name == "ventriculomegaly" or fit_bone(lay) is None:
        return False
    if name == "absent_csp":
        return bool((lay == CSP).sum() >= 4)
    if name in ("banana_cerebellum", "enlarged_cm"):
        return bool((lay == FP).sum() >= 4)
    if name == "lemon":
        return bool((lay == CSP).sum() >= 2 or (lay == FP).sum() >= 2) and not _cut(lay)
    return not _cut(lay)  # microcephaly


def _cut(lay: np.ndarray) -> bool:
    """The head touches the frame's edge (partly outside the image)."""
    head = lay >= 1
    return bool(head[0].any() or head[-1].any() or head[:, 0].any() or head[:, -1].any())


def _structure(layout: np.ndarray, cls: int, name: str, where: str) -> np.ndarray:
    sel = layout == cls
    if not sel.any():
        raise UserError(f"{where}: the layout has no {name}, which {where.split(':')[0]} edits")
    return sel


def apply_anomaly(layout: np.ndarray, name: str, severity: float | None, ga_weeks: float = math.nan, where: str | None = None) -> np.ndarray:
    """A normal layout edited into the anomaly ``name`` (a copy); UserError for an unknown name,
    a severity out of range, or a layout that lacks the structure the anomaly edits."""
    a, s = anomaly(name, severity, where or "--anomaly")
    where = where or f"anomaly {a.name}"
    lay = np.asarray(layout).astype(np.int64).copy()
    if a.name == "ventriculomegaly":
        raise UserError(f"{where}: the layout classes have no lateral ventricle to enlarge (the phantom renders "
                        "ventriculomegaly: diffice phantoms --anomalies)")
    if a.name == "absent_csp":
        sel = _structure(lay, CSP, "csp (cavum)", where)
        keep = sel.copy()
        target = (1.0 - s) * sel.sum()
        while keep.sum() > target and keep.any():
            keep = ndimage.binary_erosion(keep, disk(1))
        lay[sel & ~keep] = HEAD
        return lay
    if a.name == "microcephaly":
        frame = head_frame(lay, f"{where}: layout", need_front=False)
        return _warp_radial(lay, frame, lambda u, v: np.full_like(u, 1.0 - s))
    if a.name == "lemon":
        frame = head_frame(lay, f"{where}: layout")
        return _warp_radial(lay, frame, lambda u, v: lemon_radius(u, v, s, frame.ratio))
    # the fossa posterior: banana_cerebellum, enlarged_cm
    fp = _structure(lay, FP, "fp (fossa posterior)", where)
    frame = head_frame(lay, f"{where}: layout")
    u, v = frame.coords(lay.shape)
    inside = ndimage.binary_fill_holes(lay >= 1) & (lay != BONE) & (lay != BG)
    lay[fp] = HEAD
    if a.name == "banana_cerebellum":
        tcd = float(np.ptp(v[fp] * frame.ratio)) + 1.0 / frame.a
        u_front = min(float(u[fp].max()), CB_U + 0.19)
        region = banana(u, v, s, frame.ratio, u_front, tcd) > 0.5
    else:
        if math.isnan(ga_weeks):
            raise UserError(f"{where}: needs the gestational age (--ga, or the manifest's ga column) to draw the cisterna magna in mm")
        mm = mm_per_pixel(frame.a, frame.b, ga_weeks)
        skull = float(np.clip((lay == BONE).sum() / max(ellipse_perimeter(frame.a, frame.b), 1.0) / frame.a, 0.02, 0.1))
        cb, cm = dandy_walker(u, v, s / mm / frame.a, frame.ratio, 0.17, skull)
        region = (cb > 0.5) | (cm > 0.5)
    lay[region & inside] = FP
    return lay
