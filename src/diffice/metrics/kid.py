"""Kernel distance (KID, Bińkowski et al., ICLR 2018) between two sets of features, and the
smallest set a Fréchet distance is shown for.

KID is the unbiased estimate of the squared maximum mean discrepancy under the cubic polynomial
kernel k(x, y) = (x·y / d + 1)³. Unlike the Fréchet distance it has no bias that shrinks with
N, so it can be compared across set sizes and is usable at the tens of frames a CPU run affords.
The kernel and the unbiased MMD² are torchmetrics' (``torchmetrics.image.kid.poly_mmd``, the
function behind ``KernelInceptionDistance``); here they run on features diffice has already
computed (Inception pool3 for KID, the SonoNet / oracle features for the FSD column's twin), over
``subsets`` random subsets drawn from a **seeded** generator, so a file recomputed from the same
frames is byte-identical. Reported: the mean over subsets ± their standard deviation.

Subset size: half the smaller set, at most 1,000 (torchmetrics' default). A subset as large as
the set would draw the same frames every time and report a spread of 0; half the set gives a
spread that says how much the estimate moves with the frames drawn (conservative: it is the
spread at N/2, not at N).

A KID is marked where it cannot be read as a distance (:func:`kid_marks`, footnoted by
:func:`kid_footnotes` in every table that shows one): ``†`` when the spread over subsets exceeds
the value (noise, or a few outlying frames, dominate it), ``‡`` when it is taken on FSD features
that are not SonoNet's (the oracle's or the guide's own backbone: unnormalised features on which
a few outlying frames dominate the cubic kernel; docs/metrics.md, Statistics).

``FRECHET_MIN_N``: a Fréchet distance between Gaussian fits is biased upwards by an amount that
falls like 1/N and depends on the feature dimension (2,048 for Inception); from a handful of
frames it is not an estimate of anything (16 frames gave FSDs of 49 to 19,856 between rows of
one table). diffice shows a Fréchet distance only when both sets hold at least this many frames,
otherwise ``n/a (N too small)`` with the N, and compares FIDs only at equal N.
"""

from __future__ import annotations

import numpy as np
import torch

FRECHET_MIN_N = 256
KID_SUBSETS = 100
KID_MAX_SUBSET = 1000


def kid_subset_size(n_a: int, n_b: int) -> int:
    return int(min(KID_MAX_SUBSET, max(2, min(n_a, n_b) // 2)))


def kernel_distance(fa, fb, subsets: int = KID_SUBSETS, subset_size: int | None = None, seed: int = 0) -> dict:
    """KID between feature sets (N_a, D) and (N_b, D): ``{kid, kid_std, subset_size, n_a, n_b}``
    (``kid`` None when a set has fewer than 2 frames)."""
    from torchmetrics.image.kid import poly_mmd

    out = {"kid": None, "kid_std": None, "subset_size": None, "n_a": len(fa), "n_b": len(fb)}
    if len(fa) < 2 or len(fb) < 2:
        return out
    a = torch.as_tensor(np.asarray(fa), dtype=torch.float64).reshape(len(fa), -1)
    b = torch.as_tensor(np.asarray(fb), dtype=torch.float64).reshape(len(fb), -1)
    m = int(subset_size or kid_subset_size(len(a), len(b)))
    m = min(m, len(a), len(b))
    g = torch.Generator().manual_seed(int(seed))
    scores = torch.stack([poly_mmd(a[torch.randperm(len(a), generator=g)[:m]],
                                   b[torch.randperm(len(b), generator=g)[:m]]) for _ in range(int(subsets))])
    out.update(kid=float(scores.mean()), kid_std=float(scores.std(unbiased=False)), subset_size=m)
    return out


def frechet_shown(n_a: int, n_b: int, min_n: int = FRECHET_MIN_N) -> bool:
    """Whether a Fréchet distance between sets of these sizes is shown (both >= ``min_n``)."""
    return min(int(n_a), int(n_b)) >= int(min_n)


def frechet_note(name: str, n_a: int, n_b: int, min_n: int = FRECHET_MIN_N) -> str:
    return f"{name}: n/a (N too small: {n_a} vs {n_b} frames, shown from {min_n} a side); KID beside it"


KID_NOISE = "†"
KID_FEATURES = "‡"
KID_FOOTNOTES = {
    KID_NOISE: ("† KID whose spread over subsets exceeds its value: at this N it cannot be told from 0 and a few "
                "outlying frames dominate it; read it as noise, not as a distance"),
    KID_FEATURES: ("‡ KID on FSD features that are not SonoNet's ({features}): unnormalised features on which a few "
                   "outlying frames dominate the cubic kernel, on a scale no other feature space shares; KID on "
                   "Inception and on SonoNet features is not affected"),
}


def sononet_features(features: str | None) -> bool | None:
    """Whether a run's FSD feature source (``FeatureNets.sononet_source``) is the official SonoNet
    (None when not recorded)."""
    return None if not features else str(features).lower().startswith("official sononet")


def kid_marks(key: str, value, std, features: str | None = None) -> str:
    """The footnote marks of a KID cell (``""`` for a KID that reads as a distance): ``†`` when its
    std over subsets exceeds |value|, ``‡`` for a ``kid_fsd*`` key on features (the run's FSD
    feature source) that are not SonoNet's."""
    marks = ""
    if value is not None and std is not None and float(std) > abs(float(value)):
        marks += KID_NOISE
    if key.startswith("kid_fsd") and sononet_features(features) is False:
        marks += KID_FEATURES
    return marks


def kid_footnotes(cells, features: str | None = None) -> list[str]:
    """The footnotes of the marks (:func:`kid_marks`) found in a table's cells, in mark order."""
    text = " ".join(str(c) for c in cells)
    return [note.format(features=features or "not recorded") for mark, note in KID_FOOTNOTES.items() if mark in text]
