"""The phantom's classes, concepts, planes, fault kinds and its appearance constants."""

from __future__ import annotations

import math

import numpy as np

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


def keyed_rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in keys])
