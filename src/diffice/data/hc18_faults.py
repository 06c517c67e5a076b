"""``hc18-faults``: real fetal heads (HC18) with acquisition faults of known severity.

The clean HC18 frame is the standard plane (SP) and the ground-truth target; the same frame with
one acquisition fault applied is the non-standard plane (NSP) a counterfactual should repair. The
faults are applied to the real image at its own resolution (800x540 for most frames), before any
resizing, as the physics that makes them acts on the acquired image:

=============  ======================================================  =============
fault          model (severity s in [0, 1])                            degrades
=============  ======================================================  =============
defocus        the beam's point-spread function widened: an             ``qs_focus``
               anisotropic Gaussian blur, lateral σ = 6 s px, axial
               σ = 3 s px at 800 px width (lateral resolution of a
               convex probe is 2-3x worse than axial; σ = 6 px is the
               blur that drops SonoNet-16's brain-plane calls to 0.29)
shadow         acoustic shadowing behind the skull: inside a wedge of    ``qs_skull``
               rays from a virtual apex above the frame, everything
               deeper than where the ray enters the head is attenuated
               by up to (1 - 0.9 s), with soft edges (bone reflects and
               absorbs the beam, so the brain behind it goes dark)
noise          a poor acoustic window: near-field clutter (a smooth      ``qs_snr``
               veil that fades with depth, amplitude 0.3 s) and
               electronic noise (correlated over ~1.5 px, σ = 0.12 s)
gain           a time-gain-compensation error: the gain ramps with       ``qs_gain``
               depth by up to ±60 s % and the overall gain is off by
               up to ±30 s % (SonoNet normalises each frame, so this
               fault barely moves it: a judge that must see it is the
               oracle, not SonoNet)
reverberation  multiple reflections between the transducer and the       ``qs_artifact``
               reflectors in front of the far side of the near skull
               (maternal wall, near field, the near skull itself): along
               every ray, an echo from depth z returns again at 2z, 3z
               and 4z, with amplitude 0.6 s, (0.6 s)², (0.6 s)³ (each
               bounce loses energy), blurred a little more each time
=============  ======================================================  =============

Each HC18 frame gives two rows that share its fetus (so a split never separates them): the clean
frame (``label`` SP, every concept 1) and its faulted twin (``label`` NSP, the degraded concept
1 − s, ``target`` = the clean frame). The fault and its severity are drawn from a generator seeded
by (seed, frame number): the set is the same on every machine. The head mask is HC18's ellipse
outline, filled; ``hc_mm`` and ``pixel_mm`` (at the written size) come from the challenge's CSV, ``ga``
(weeks) from ``hc_mm`` by Hadlock's regression (:func:`diffice.data.anomalies.ga_weeks`; 154 of the 999
heads are below its 14-week fit range, where the value is an extrapolation).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from diffice.data.anomalies import ga_weeks
from diffice.errors import UserError

FAULTS = ("defocus", "shadow", "noise", "gain", "reverberation")
CONCEPTS = ("qs_focus", "qs_skull", "qs_snr", "qs_gain", "qs_artifact")
DEGRADES = dict(zip(FAULTS, CONCEPTS))
SEVERITY_RANGE = (0.5, 1.0)
COLUMNS = ["image", "id", "label", "patient", "split", "mask", "target", *CONCEPTS, "fault", "severity",
           "hc_mm", "pixel_mm", "ga", "source"]
CSV_NAME = "training_set_pixel_size_and_HC.csv"


def _scale(img: np.ndarray) -> float:
    """Pixel sizes in the docstring are at 800 px width."""
    return img.shape[1] / 800.0


def defocus(img: np.ndarray, s: float) -> np.ndarray:
    k = _scale(img)
    return ndimage.gaussian_filter(img, sigma=(3.0 * s * k, 6.0 * s * k), mode="nearest")


def _rays(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Angle and distance of every pixel from a virtual probe apex half a frame above the top centre."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ay, ax = -0.5 * h, (w - 1) / 2.0
    return np.arctan2(xx - ax, yy - ay), np.hypot(xx - ax, yy - ay)


def shadow(img: np.ndarray, s: float, head: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    theta, r = _rays(img.shape)
    if not head.any():
        return img
    th_head = theta[head]
    lo, hi = float(th_head.min()), float(th_head.max())
    width = (hi - lo) * rng.uniform(0.2, 0.35)
    centre = rng.uniform(lo + width / 2, hi - width / 2)
    # soft-edged wedge: 1 inside, falling off over a tenth of its width
    edge = max(width * 0.1, 1e-6)
    wedge = np.clip((width / 2 - np.abs(theta - centre)) / edge + 0.5, 0.0, 1.0)
    # where each ray enters the head: the smallest distance of a head pixel at that angle
    bins = np.clip(((theta - lo) / max(hi - lo, 1e-9) * 511).round().astype(int), 0, 511)
    enter = np.full(512, np.inf)
    np.minimum.at(enter, bins[head], r[head])
    r_enter = enter[bins]
    ramp = np.clip((r - r_enter) / (0.03 * img.shape[0]), 0.0, 1.0)  # the shadow starts behind the bone
    ramp[~np.isfinite(r_enter)] = 0.0
    return img * (1.0 - 0.9 * s * wedge * ramp)


def noise(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    k = _scale(img)
    veil = ndimage.gaussian_filter(rng.standard_normal((h, w)), 40 * k)
    veil = (veil - veil.min()) / max(float(np.ptp(veil)), 1e-9)
    depth = np.linspace(0, 1, h)[:, None]
    clutter = 0.3 * s * np.exp(-depth / 0.5) * (0.6 + 0.4 * veil)
    grain = ndimage.gaussian_filter(rng.standard_normal((h, w)), 1.5 * k)
    grain /= max(float(grain.std()), 1e-9)
    imaged = ndimage.binary_erosion(img > 0.02, iterations=2) | (ndimage.gaussian_filter(img, 4) > 0.02)
    return np.where(imaged, img + clutter + 0.12 * s * grain, img)


def gain(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    h = img.shape[0]
    slope = 0.6 * s * rng.choice([-1.0, 1.0])
    overall = 1.0 + 0.3 * s * rng.choice([-1.0, 1.0])
    depth = np.linspace(-0.5, 0.5, h)[:, None]
    return img * overall * (1.0 + 2.0 * slope * depth)


def reverberation(img: np.ndarray, s: float, head: np.ndarray) -> np.ndarray:
    """Echoes of everything between the probe face and the far side of the near skull, repeated
    along each ray at 2x, 3x and 4x their depth.

    Depth is measured along the rays of :func:`_rays` from the probe face (the arc through the top
    centre of the frame). An echo at depth z is sent back into the tissue by the transducer face and
    returns from 2z, 3z, 4z (a k-th order reverberation): the frame at depth d gains
    ``(0.6 s)^(k-1)`` times the echo at depth d / k, blurred by k px (at 800 px width), for sources
    no deeper than the near skull plus its thickness (rays that miss the head: the near field, 15 %
    of the frame's height). Only the imaged area changes. (An earlier version repeated only the
    near skull's own echo where it faces the probe: its copies mostly fell below the frame and 130
    of 200 such frames differed from their clean twin by less than half a grey level on average.)
    """
    h, w = img.shape
    imaged = ndimage.binary_erosion(img > 0.02, iterations=2) | (ndimage.gaussian_filter(img, 4) > 0.02)
    theta, r = _rays(img.shape)
    r_face = 0.5 * h  # distance from the virtual apex to the top centre of the frame
    depth = r - r_face
    # the deepest reverberating source on each ray: the near skull's far side, or the near field;
    # smoothed over neighbouring rays so that the head's edge leaves no ray-shaped step
    lo, hi = float(theta.min()), float(theta.max())
    bins = np.clip(((theta - lo) / max(hi - lo, 1e-9) * 511).round().astype(int), 0, 511)
    enter = np.full(512, np.inf)
    if head.any():
        np.minimum.at(enter, bins[head], r[head])
    profile = np.where(np.isfinite(enter), np.maximum(enter - r_face + 0.03 * h, 0.15 * h), 0.15 * h)
    z_max = ndimage.gaussian_filter1d(profile, 16.0, mode="nearest")[bins]
    ay, ax = -0.5 * h, (w - 1) / 2.0
    out = img.astype(np.float64).copy()
    amp = 1.0
    for k in (2, 3, 4):
        amp *= 0.6 * s
        src_depth = depth / k
        src_r = r_face + src_depth
        coords = np.stack([ay + src_r * np.cos(theta), ax + src_r * np.sin(theta)])
        blurred = ndimage.gaussian_filter(img, sigma=k * _scale(img))
        echo = ndimage.map_coordinates(blurred, coords, order=1, mode="constant", cval=0.0)
        within = np.clip((z_max - src_depth) / (0.02 * h) + 0.5, 0.0, 1.0) * (depth > 0)
        out += amp * echo * within
    return np.where(imaged, out, img)


def apply_fault(img: np.ndarray, fault: str, s: float, head: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``img`` float HxW in [0, 1] at the acquired resolution -> the faulted frame, clipped to [0, 1]."""
    if fault == "defocus":
        out = defocus(img, s)
    elif fault == "shadow":
        out = shadow(img, s, head, rng)
    elif fault == "noise":
        out = noise(img, s, rng)
    elif fault == "gain":
        out = gain(img, s, rng)
    elif fault == "reverberation":
        out = reverberation(img, s, head)
    else:
        raise UserError(f"unknown fault '{fault}' (have: {', '.join(FAULTS)})")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def draw_fault(seed: int, number: int, draw: int = 0) -> tuple[str, float, np.random.Generator]:
    """The fault, severity and generator of HC18 frame ``number`` (its place in name order); ``draw`` > 0:
    that frame's further faulted twins (``train_draws``)."""
    rng = np.random.default_rng([int(seed), 7, int(number)] + ([int(draw)] if draw else []))
    fault = FAULTS[int(rng.integers(len(FAULTS)))]
    return fault, float(rng.uniform(*SEVERITY_RANGE)), rng


def _ga_text(hc_mm: float) -> str:
    """Hadlock's GA of ``hc_mm`` for the manifest; blank (unknown) where it is no fetal age (outside 10-45 weeks)."""
    ga = ga_weeks(hc_mm)
    return f"{ga:.2f}" if math.isfinite(ga) and 10.0 <= ga <= 45.0 else ""


def read_hc_csv(root: Path) -> dict[str, tuple[float, float]]:
    """``{image stem: (pixel size mm, head circumference mm)}`` from the challenge's CSV."""
    path = root / CSV_NAME
    if not path.is_file():
        raise UserError(f"{path}: not found; hc18-faults needs the challenge's pixel-size and HC table beside training_set/")
    out = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for n, row in enumerate(csv.DictReader(fh), start=2):
            try:
                out[Path(row["filename"]).stem] = (float(row["pixel size(mm)"]), float(row["head circumference (mm)"]))
            except (KeyError, ValueError) as err:
                raise UserError(f"{path}:{n}: expected columns filename, pixel size(mm), head circumference (mm)") from err
    return out


def write_hc18_faults(root: str | Path, out: str | Path, *, size: tuple[int, int] = (270, 400), seed: int = 0,
                      fractions=(0.7, 0.1, 0.2), split_seed: int = 0, limit: int | None = None,
                      train_draws: int = 1, progress: bool = True) -> Path:
    """Write the benchmark into ``out`` (``images/``, ``masks/``, ``manifest.csv`` last); returns the manifest.
    ``train_draws`` > 1: each training-split frame gets that many faulted twins (``{id}_{fault}``, then
    ``{id}_{fault}_{k}``), each its own draw; the first is the K = 1 set's, so validation and test do not change."""
    from PIL import Image

    from diffice.data.datasets import patient_splits
    from diffice.data.sources import hc18_records, load_image, load_mask
    from diffice.io import atomic_write_text, save_png

    root, out = Path(root), Path(out)
    if not root.exists():
        raise UserError(f"{root}: HC18 not found; download the training set of the HC18 challenge (Zenodo record "
                        "1327317, CC BY 4.0) and point --root at the folder holding training_set/")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    records = hc18_records(root)
    table = read_hc_csv(root)
    if limit is not None:
        records = records[: int(limit)]
    h, w = int(size[0]), int(size[1])
    patients = [r.patient for r in records]
    splits = patient_splits(patients, np.ones(len(records)), list(fractions), int(split_seed))
    rows = []
    from diffice.progress import track

    it = track(list(enumerate(records)), f"writing hc18-faults to {out}", enabled=progress)
    for number, rec in it:
        img = load_image(rec.image)
        if rec.mask is None:
            raise UserError(f"{rec.image}: no annotation beside it ({rec.id}_Annotation.png)")
        head = load_mask(rec.mask, "outline", img.shape, 2).astype(bool)
        pixel_mm, hc_mm = table.get(rec.id, (math.nan, math.nan))
        small = lambda a: np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR))  # noqa: E731
        clean_u8 = small((img * 255).round().astype(np.uint8))
        mask_u8 = np.asarray(Image.fromarray(head.astype(np.uint8)).resize((w, h), Image.NEAREST))
        save_png(out / "images" / f"{rec.id}.png", clean_u8)
        save_png(out / "masks" / f"{rec.id}.png", mask_u8)
        common = {"patient": rec.patient, "split": splits[number], "mask": f"masks/{rec.id}.png",
                  "hc_mm": f"{hc_mm:.2f}", "pixel_mm": f"{pixel_mm * img.shape[1] / w:.5f}",
                  "ga": _ga_text(hc_mm), "source": rec.id}
        rows.append({"image": f"images/{rec.id}.png", "id": rec.id, "label": "SP", "target": "",
                     **{c: "1" for c in CONCEPTS}, "fault": "", "severity": "", **common})
        for draw in range(int(train_draws) if splits[number] == "train" else 1):
            fault, sev, rng = draw_fault(seed, number, draw)
            name = f"{rec.id}_{fault}" + (f"_{draw}" if draw else "")
            save_png(out / "images" / f"{name}.png", small((apply_fault(img, fault, sev, head, rng) * 255).round().astype(np.uint8)))
            rows.append({"image": f"images/{name}.png", "id": name, "label": "NSP",
                         "target": f"images/{rec.id}.png", **{c: "1" for c in CONCEPTS}, DEGRADES[fault]: f"{1 - sev:.4f}",
                         "fault": fault, "severity": f"{sev:.4f}", **common})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(out / "manifest.csv", buf.getvalue())
