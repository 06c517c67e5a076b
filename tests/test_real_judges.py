"""Judges of real frames: head biometry, the official SonoNet-16 brain-plane judge, their metrics."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from diffice.data.anomalies import ellipse_perimeter
from diffice.metrics.biometry import biometry_fields, head_circumference, head_dice
from diffice.report.real_judges import real_intervals, real_metrics
from diffice.report.tables import markdown_report, real_rows

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SONONET = SHARED / "sononet" / "SonoNet16.npz"
HC18_FAULTS = Path(__file__).resolve().parents[1] / "data" / "hc18-faults" / "manifest.csv"


def _ellipse(h, w, cy, cx, ry, rx, label=1):
    yy, xx = np.mgrid[:h, :w]
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.int64) * label


def test_hc_of_a_filled_ellipse_with_rectangular_pixels():
    mask = _ellipse(128, 160, 64, 80, 40, 60)
    px = (0.5, 0.8)  # mm per row, per column: a resize that stretched the frame
    want = ellipse_perimeter(60 * 0.8, 40 * 0.5)
    assert head_circumference(mask, px) == pytest.approx(want, rel=0.02)
    # a speck elsewhere is not the head (largest component), other classes count as head
    mask[2:4, 2:4] = 1
    mask[60:70, 70:90] = 3
    assert head_circumference(mask, px) == pytest.approx(want, rel=0.02)
    assert math.isnan(head_circumference(mask, (math.nan, 0.8)))
    assert math.isnan(head_circumference(np.zeros((10, 10), np.int64), px))


def test_biometry_fields_and_head_dice():
    a, b = _ellipse(64, 80, 32, 40, 20, 30), _ellipse(64, 80, 32, 42, 20, 30)
    assert head_dice(a, a) == 1.0 and 0.8 < head_dice(a, b) < 1.0 and head_dice(a * 0, a * 0) is None
    f = biometry_fields(a, b, a, [0.3, 0.3], 150.0)
    assert f["hc_input_mm"] == pytest.approx(f["hc_target_mm"]) and f["head_dice_target_input"] == 1.0
    assert f["hc_annotated_mm"] == 150.0 and f["pixel_mm"] == [0.3, 0.3]
    f = biometry_fields(a, b, None, None, float("nan"))
    assert f["hc_cf_mm"] is None and f["hc_target_mm"] is None and f["hc_annotated_mm"] is None


def _records():
    recs = []
    for i in range(20):
        recs.append({"brain_input": i < 5, "brain_cf": i < 15, "brain_target": i < 18,
                     "hc_input_mm": 100 + (i % 7), "hc_cf_mm": 100 + (i % 3), "hc_target_mm": 100.0,
                     "hc_annotated_mm": 102.0, "head_dice_target_cf": 0.9 + 0.004 * i, "head_dice_target_input": 0.9})
    return recs


def test_real_intervals_count_what_they_say():
    iv = real_intervals(_records())
    assert iv["brain_input"]["k"] == 5 and iv["brain_cf"]["k"] == 15 and iv["brain_target"]["n"] == 20
    # of the 15 inputs SonoNet does not call a brain plane, the counterfactuals of 10 are called one
    assert (iv["brain_rescued"]["k"], iv["brain_rescued"]["n"]) == (10, 15)
    errs = sorted(abs(i % 3) for i in range(20))  # |HC(cf) - HC(target)| / 100 in %
    assert iv["hc_error_cf"]["value"] == pytest.approx(float(np.median(errs)))
    assert iv["hc_error_target_annotated"]["value"] == pytest.approx(100 * 2 / 102)
    assert iv["hc_error_cf"]["low"] <= iv["hc_error_cf"]["value"] <= iv["hc_error_cf"]["high"]
    m = real_metrics(iv)
    assert m["brain_rescued"] == pytest.approx(10 / 15) and m["brain_rescued_n"] == 15
    # phantom records carry none of it: no keys, no table
    assert real_intervals([{"p_input": 0.1}]) == {}
    assert real_rows([{"method": "diff-ice", "intervals": {}}]) is None


def test_real_judges_table_in_the_markdown_report():
    iv = real_intervals(_records())
    m = {"method": "diff-ice", "n_frames": 20, "iterations": 1, "intervals": iv, **real_metrics(iv)}
    text = markdown_report([m])
    assert "Judges of real frames" in text and "10 / 15 (0.67" in text


@pytest.mark.skipif(not SONONET.is_file(), reason="official SonoNet-16 weights not in ../shared/data")
def test_brain_judge_matches_the_official_preprocessing_of_files():
    from PIL import Image

    from diffice.nets.sononet import BrainPlaneJudge, preprocess_official

    judge = BrainPlaneJudge.from_official(SONONET)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (128, 160), dtype=np.uint8) for _ in range(2)]
    ex = sorted((SONONET.parent / "example_images").glob("*BRAIN*"))
    frames += [np.asarray(Image.open(p).convert("L").resize((160, 128), Image.BILINEAR)) for p in ex[:2]]
    x = torch.stack([torch.from_numpy(f.astype(np.float32))[None] / 127.5 - 1 for f in frames])
    out = judge(x)
    with torch.no_grad():
        ref = torch.stack([judge.net(preprocess_official(f, None)[None])[0] for f in frames])
    assert torch.equal(out["brain"], torch.isin(ref.argmax(1), torch.tensor(judge.brain)))
    assert torch.allclose(out["p_brain"], ref.softmax(1)[:, judge.brain].sum(1), atol=0.02)
    assert ((out["p_brain"] >= 0) & (out["p_brain"] <= 1)).all()


@pytest.mark.skipif(not HC18_FAULTS.is_file(), reason="data/hc18-faults not written (diffice hc18-faults)")
def test_hc18_faults_items_carry_pixel_size_and_hc():
    from diffice.config import load_config
    from diffice.data.datamodule import DiffIceDataModule

    cfg = load_config([Path(__file__).resolve().parents[1] / "configs/data/hc18-faults.yaml"],
                      [f"data.manifest={HC18_FAULTS}", "data.image_size=[128,160]"])
    ds = DiffIceDataModule(cfg).dataset("test", label="SP")
    item = ds[0]
    row = next(r for r in csv.DictReader(open(HC18_FAULTS)) if r["id"] == item["id"])
    px = float(row["pixel_mm"])
    assert item["pixel_mm"].tolist() == pytest.approx([px * 270 / 128, px * 400 / 160])
    assert float(item["hc_mm"]) == pytest.approx(float(row["hc_mm"]))
    # the filled annotation's HC at the model's size is the annotated HC within a few per cent
    hc = head_circumference(item["mask"].numpy(), tuple(item["pixel_mm"].tolist()))
    assert hc == pytest.approx(float(row["hc_mm"]), rel=0.05)
