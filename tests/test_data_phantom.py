"""The phantom simulator: determinism, labels vs concepts, ground-truth targets, masks."""

from __future__ import annotations

import numpy as np
import pytest

from diffice.data import phantom as ph

SIZE = (32, 40)


def test_deterministic_per_seed_and_index():
    a = ph.render_frame(5, SIZE, seed=3)
    b = ph.render_frame(5, SIZE, seed=3)
    for k in ("image", "target", "mask"):
        assert np.array_equal(a[k], b[k])
    assert a["concepts"] == b["concepts"] and a["id"] == b["id"]
    c = ph.render_frame(5, SIZE, seed=4)
    assert not np.array_equal(a["image"], c["image"])
    d = ph.render_frame(6, SIZE, seed=3)
    assert not np.array_equal(a["image"], d["image"])


def test_any_size_and_types():
    for size in [(32, 40), (64, 80), (50, 37)]:
        fr = ph.render_frame(1, size)
        assert fr["image"].shape == size and fr["image"].dtype == np.uint8
        assert fr["mask"].shape == size and fr["mask"].max() < len(ph.CLASSES)
        assert fr["target"].shape == size
        # black outside the convex sector: the top corners are outside
        assert fr["image"][0, 0] == 0 and fr["image"][0, -1] == 0 and fr["mask"][0, 0] == 0


def test_labels_agree_with_concepts_with_margin():
    n = 300
    labels = []
    for i in range(n):
        fr = ph.render_frame(i, SIZE, seed=1, sp_fraction=0.3) if i < 60 else None
        lat = ph.sample_frame(i, seed=1, sp_fraction=0.3)
        conc = ph.concepts_of(lat["actual"])
        assert all(0.0 <= v <= 1.0 for v in conc.values())
        sp = all(v >= 0.5 for v in conc.values())
        assert sp == lat["sp"] == ph.is_sp(i, 1, 0.3)
        if sp:  # margins keep the classes separable
            assert min(conc.values()) >= ph.GOOD_MIN - 1e-9
        else:
            assert min(conc.values()) <= ph.BAD_MAX + 1e-9
        if fr is not None:
            assert fr["label"] == int(sp) and fr["concepts"] == conc
        labels.append(sp)
    assert abs(np.mean(labels) - 0.3) < 0.02  # configurable class balance


def test_frames_of_a_patient_share_anatomy():
    a = ph.render_frame(8, SIZE, frames_per_patient=4)
    b = ph.render_frame(11, SIZE, frames_per_patient=4)
    c = ph.render_frame(12, SIZE, frames_per_patient=4)
    assert a["patient"] == b["patient"] != c["patient"]
    assert a["latents"]["patient"]["a"] == b["latents"]["patient"]["a"] != c["latents"]["patient"]["a"]


def _first(kind: str, size=(64, 80), start=0) -> dict:
    for i in range(start, 400):
        lat = ph.sample_frame(i)
        if kind == "sp" and lat["sp"]:
            return ph.render_frame(i, size)
        if lat["faults"] == [kind]:
            return ph.render_frame(i, size)
    raise AssertionError(kind)


def test_target_equals_input_for_standard_planes():
    fr = _first("sp")
    assert fr["label"] == 1 and np.array_equal(fr["image"], fr["target"])


@pytest.mark.parametrize("fault", ["cerebellar", "ventricular", "no_csp"])
def test_target_differs_only_inside_the_brain_for_anatomical_faults(fault):
    fr = _first(fault)
    diff = fr["image"].astype(int) != fr["target"].astype(int)
    assert diff.sum() > 10  # the faulty structure is changed ...
    outside = fr["mask"] == ph.BG
    assert not diff[outside].any()  # ... and nothing outside the head (speckle, tissue, shadows)
    head = fr["mask"] != ph.BG
    assert diff.sum() < 0.4 * head.sum()  # a local change


@pytest.mark.parametrize("fault", ["blur", "contrast", "noise"])
def test_target_differs_globally_for_acquisition_faults(fault):
    fr = _first(fault)
    assert fr["concepts"]["qs_bone"] <= ph.BAD_MAX
    sector = fr["target"] > 0
    diff = fr["image"] != fr["target"]
    assert diff[sector].mean() > 0.4


def test_mask_shows_only_visible_structures():
    fr = _first("cerebellar")
    assert (fr["mask"] == ph.FP).sum() > 0
    sp = _first("sp")
    assert (sp["mask"] == ph.FP).sum() == 0
    assert (sp["mask"] == ph.TH).sum() > 0 and (sp["mask"] == ph.CSP).sum() > 0
    assert (sp["mask"] == ph.BONE).sum() > 0 and (sp["mask"] == ph.HEAD).sum() > 0
    nocsp = _first("no_csp")
    assert (nocsp["mask"] == ph.CSP).sum() == 0


def test_structures_visible_at_64x80():
    """TH is darker than the brain around it in an SP frame (what a small classifier sees)."""
    fr = _first("sp")
    img, m = fr["image"].astype(float), fr["mask"]
    assert img[m == ph.TH].mean() < 0.8 * img[m == ph.HEAD].mean()
    assert img[m == ph.BONE].mean() > 1.5 * img[m == ph.HEAD].mean()


def test_fields_of_view_are_convex_sectors_open_at_the_bottom():
    """Every field of view: black top corners, imaged top centre, and a sector whose sides
    widen with depth (HC18's frames: the bottom is imaged to or near the canvas edge)."""
    for fov in range(len(ph.FOVS)):
        g = ph.geometry(64, 80, fov)
        inside = g.inside.astype(bool)
        assert not inside[0, 0] and not inside[0, -1] and inside[2, 40]
        widths = inside.sum(axis=1)
        assert widths[8] < widths[40] and widths[40] >= 0.75 * 80
    assert 0.6 < np.mean([ph.geometry(64, 80, f).inside.mean() for f in range(len(ph.FOVS))]) < 0.95
    seen = {ph.sample_frame(i)["actual"]["fov"] for i in range(200)}
    assert seen == set(range(len(ph.FOVS)))


def test_head_and_skull_grow_with_gestational_age():
    pats = [ph.sample_patient(0, p) for p in range(200)]
    ga = np.array([p["ga"] for p in pats])
    assert np.corrcoef(ga, [p["a"] for p in pats])[0, 1] > 0.9
    assert np.corrcoef(ga, [p["skull"] for p in pats])[0, 1] > 0.6
    # rendered: head area follows the age
    areas, ages = [], []
    for i in range(0, 160, 4):
        fr = ph.render_frame(i, (64, 80))
        if fr["latents"]["frame"]["cut"]:
            continue
        areas.append((fr["mask"] != ph.BG).sum())
        ages.append(fr["latents"]["patient"]["ga"])
    assert np.corrcoef(ages, areas)[0, 1] > 0.5


def test_skull_is_bright_facing_the_beam_and_drops_out_laterally():
    """Bone pixels near the top and bottom of the head (normal along the beam) are brighter
    than those at its lateral walls, in the SP frames of a few patients."""
    ratios = []
    for i in range(120):
        if not ph.sample_frame(i)["sp"]:
            continue
        fr = ph.render_frame(i, (224, 288))
        img, bone = fr["image"].astype(float), fr["mask"] == ph.BONE
        ys, xs = np.nonzero(bone)
        cy, cx = ys.mean(), xs.mean()
        ang = np.abs(np.arctan2(ys - cy, xs - cx))  # 0 / pi: lateral, pi/2: top or bottom
        vertical = np.abs(ang - np.pi / 2) < np.pi / 8
        lateral = (ang < np.pi / 8) | (ang > 7 * np.pi / 8)
        if vertical.sum() > 20 and lateral.sum() > 20:
            ratios.append(img[ys[vertical], xs[vertical]].mean() / max(1.0, img[ys[lateral], xs[lateral]].mean()))
    assert len(ratios) >= 5 and np.median(ratios) > 1.5


def test_grey_levels_are_like_a_scanner_display():
    """Not a cartoon's flat black and white: anechoic fluid sits on a noise floor, the skull
    reaches the top of the scale, and the brain is darker than the tissue around the head."""
    imgs, masks, inside = [], [], []
    for i in range(0, 60, 3):
        fr = ph.render_frame(i, (112, 144))
        if fr["faults"]:
            continue
        imgs.append(fr["image"])
        masks.append(fr["mask"])
        inside.append(ph.geometry(112, 144, fr["latents"]["frame"]["fov"]).inside.astype(bool))
    assert imgs
    img, m, ins = np.stack(imgs), np.stack(masks), np.stack(inside)
    assert (img[ins] == 0).mean() < 0.2
    assert np.percentile(img[m == ph.BONE], 95) > 150
    assert img[m == ph.HEAD].mean() < img[(m == ph.BG) & ins].mean() * 1.6
