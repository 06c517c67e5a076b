"""Rendering a frame: attenuation, shadowing, the head, the display (gain, log compression, noise),
the mask, the ground-truth target; and whether a frame shows what an anomaly changes."""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import lfilter

from diffice.data import anomalies as AN
from diffice.data.phantom.anatomy import anatomy_layers, box_blur
from diffice.data.phantom.constants import (
    BONE,
    CSP,
    DYNAMIC_RANGE_DB,
    FAULT_LOOK,
    FP,
    LOOK,
    NOISE_FLOOR,
    SPECKLE_SMOOTH,
    TH,
)
from diffice.data.phantom.geometry import Geometry, geometry, scan_convert, speckle_bank
from diffice.data.phantom.latents import (
    concepts_of,
    ga_weeks,
    label_of,
    plane_of,
    sample_frame,
    sample_patient,
)


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
        amp = box_blur(amp, 0.6 * s, s)
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
    L = anatomy_layers(pat, act, geo, tex, spec)
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
