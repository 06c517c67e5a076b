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

from diffice.data.phantom.constants import (
    BAD_MAX,
    BG,
    BONE,
    CLASSES,
    CONCEPTS,
    CSP,
    DYNAMIC_RANGE_DB,
    FAULT_LOOK,
    FAULT_P,
    FAULTS,
    FP,
    GA_WEEKS,
    GOLDEN,
    GOOD_MIN,
    HEAD,
    HEAD_A,
    LOOK,
    NOISE_FLOOR,
    PLANES,
    SPECKLE_SMOOTH,
    TH,
    TISSUE_MOD,
    keyed_rng,
)
from diffice.data.phantom.geometry import (
    FOVS,
    POLAR_COLUMNS,
    POLAR_ROWS,
    Geometry,
    geometry,
    scan_convert,
    speckle_bank,
)
from diffice.data.phantom.latents import (
    concepts_of,
    ga_weeks,
    is_sp,
    label_of,
    plane_of,
    sample_frame,
    sample_patient,
)
from diffice.data.phantom.render import eligible, render_frame

__all__ = [
    "BAD_MAX", "BG", "BONE", "CLASSES", "CONCEPTS", "concepts_of", "CSP", "DYNAMIC_RANGE_DB", "eligible",
    "FAULT_LOOK", "FAULT_P", "FAULTS", "FOVS", "FP", "GA_WEEKS", "ga_weeks", "Geometry", "geometry", "GOLDEN",
    "GOOD_MIN", "HEAD", "HEAD_A", "is_sp", "keyed_rng", "label_of", "LOOK", "NOISE_FLOOR", "plane_of", "PLANES",
    "POLAR_COLUMNS", "POLAR_ROWS", "render_frame", "sample_frame", "sample_patient", "scan_convert", "speckle_bank",
    "SPECKLE_SMOOTH", "TH", "TISSUE_MOD",
]
