"""Latent parameters: a patient's anatomy from ``(seed, patient)``, a frame's pose, faults and
speckle from ``(seed, index)``; the concept scores and label they give."""

from __future__ import annotations

import functools

from diffice.data.phantom.constants import CONCEPTS, FAULT_P, FAULTS, GA_WEEKS, GOLDEN, HEAD_A, keyed_rng
from diffice.data.phantom.geometry import FOVS


def is_sp(index: int, seed: int, sp_fraction: float) -> bool:
    """Class of frame ``index``: a golden-ratio sequence, so every stretch of frames holds
    close to ``sp_fraction`` standard planes whatever the count."""
    return ((index + 0.5) * GOLDEN + _sp_offset(seed)) % 1.0 < sp_fraction


@functools.lru_cache(maxsize=64)
def _sp_offset(seed: int) -> float:
    return float(keyed_rng(seed, 7).random())


@functools.lru_cache(maxsize=4096)
def sample_patient(seed: int, patient: int) -> dict:
    """Anatomy shared by every frame of a patient (sizes relative to the canvas). Cached:
    treat the returned dict as read-only.

    ``ga`` in [0, 1] places the fetus in the gestational-age range of HC18 (about 18 to 36
    weeks): the head grows with it (as seen by a probe whose depth setting follows the head,
    so the growth on the canvas is smaller than in millimetres) and so does the skull's
    thickness and echogenicity."""
    g = keyed_rng(seed, 1, patient)
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
    g = keyed_rng(seed, 2, index)
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
