"""hc18-faults: the fault operators, the written benchmark and its data contract."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffice.cli import main
from diffice.data import hc18_faults as F

HC18 = Path(__file__).resolve().parents[2] / "shared" / "data" / "hc18"


def _scan(h=108, w=160, seed=0):
    """A speckled frame with a bright elliptic skull and its filled head mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    rho = np.hypot((xx - w / 2) / (0.3 * w), (yy - h / 2) / (0.35 * h))
    img = 0.25 + 0.1 * rng.standard_normal((h, w))
    img[np.abs(rho - 1) < 0.06] = 0.95
    return np.clip(img, 0, 1).astype(np.float32), rho <= 1.03


@pytest.mark.parametrize("fault", F.FAULTS)
def test_zero_severity_is_identity_and_faults_are_seeded(fault):
    img, head = _scan()
    assert np.allclose(F.apply_fault(img, fault, 0.0, head, np.random.default_rng(0)), img, atol=1e-6)
    a = F.apply_fault(img, fault, 0.8, head, np.random.default_rng(3))
    b = F.apply_fault(img, fault, 0.8, head, np.random.default_rng(3))
    assert np.array_equal(a, b) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.abs(a - img).mean() > 1e-3  # the fault changes the frame


def test_each_fault_does_what_it_models():
    img, head = _scan()
    lap = lambda x: np.abs(np.diff(x, axis=1)).mean()  # noqa: E731
    assert lap(F.defocus(img, 1.0)) < 0.5 * lap(img)                      # defocus: fine detail gone
    sh = F.shadow(img, 1.0, head, np.random.default_rng(0))
    darker = sh < img - 1e-6
    assert darker.any() and not (sh > img + 1e-6).any()                    # shadow only darkens
    rows = np.nonzero(darker.any(axis=1))[0]
    assert rows.min() >= np.nonzero(head.any(axis=1))[0].min()             # ... and only behind the head's entry
    g = F.gain(img, 1.0, np.random.default_rng(0))
    ratio = g[:, :].mean(1) / img.mean(1)
    assert abs(ratio[-1] - ratio[0]) > 0.5                                # gain: a depth ramp
    rv = F.reverberation(img, 1.0, head)
    assert (rv >= img - 1e-9).all() and (rv - img).max() > 0.05         # reverberation only adds echoes
    assert np.abs(rv - img).mean() > 0.02                                # ... visibly, over the frame
    dark = img.copy()
    dark[:, :20] = 0.0                                                   # outside the imaged sector
    assert np.array_equal(F.reverberation(dark, 1.0, head)[:, :8], dark[:, :8])


def test_reverberation_repeats_an_echo_at_twice_its_depth():
    h, w = 120, 161
    img = np.full((h, w), 0.1)
    img[10:13, :] = 0.9                      # a bright layer 10-12 rows under the probe face
    head = np.zeros((h, w), bool)
    rv = F.reverberation(img, 1.0, head)
    gain = (rv - img)[:, w // 2]             # the centre column runs along a ray
    assert 18 <= int(np.argmax(gain[15:])) + 15 <= 26          # its first repeat at 2x its depth
    assert gain[15:].max() > 0.3 and gain[30:34].max() > 0.1   # ... and the second at 3x, weaker
    assert gain[30:34].max() < gain[15:].max()
    nz = F.noise(img, 1.0, np.random.default_rng(0))
    assert nz[: 20].mean() > img[: 20].mean() + 0.1                        # near-field clutter


def _fake_hc18(root: Path, n=6):
    folder = root / "training_set"
    folder.mkdir(parents=True)
    rows = ["filename,pixel size(mm),head circumference (mm)"]
    for i in range(n):
        name = f"{i // 2:03d}_{'2' if i % 2 else ''}HC"
        img, head = _scan(seed=i)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"{name}.png")
        outline = head ^ np.pad(head, 1)[2:, 1:-1]  # the ellipse's boundary
        Image.fromarray((outline * 255).astype(np.uint8)).save(folder / f"{name}_Annotation.png")
        rows.append(f"{name}.png,0.1,{100 + i}")
    (root / F.CSV_NAME).write_text("\n".join(rows) + "\n")
    return root


def test_written_benchmark_keeps_pairs_together_and_loads(tmp_path, capsys):
    root = _fake_hc18(tmp_path / "hc18")
    out = tmp_path / "set"
    assert main(["hc18-faults", "--root", str(root), "--out", str(out), "--size", "54", "80"]) == 0
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert len(rows) == 12 and sum(r["label"] == "SP" for r in rows) == 6
    for clean, faulted in zip(rows[::2], rows[1::2]):
        assert faulted["target"] == clean["image"] and faulted["patient"] == clean["patient"]
        assert faulted["split"] == clean["split"] and faulted["fault"] in F.FAULTS
        s = float(faulted["severity"])
        assert F.SEVERITY_RANGE[0] <= s <= F.SEVERITY_RANGE[1]
        assert float(faulted[F.DEGRADES[faulted["fault"]]]) == pytest.approx(1 - s, abs=1e-4)
        assert float(clean["pixel_mm"]) == pytest.approx(0.1 * 160 / 80) and clean["hc_mm"].startswith("10")
    # fetus 000 has two frames: one split for both
    assert len({r["split"] for r in rows if r["patient"] == "000"}) == 1
    from diffice.config import load_config
    from diffice.data.datamodule import DiffIceDataModule

    cfg = load_config([Path(__file__).resolve().parents[1] / "configs/data/hc18-faults.yaml"],
                      [f"data.manifest={out / 'manifest.csv'}", "data.image_size=[32,48]"])
    item = DiffIceDataModule(cfg).dataset("all")[1]
    assert item["label"] == 0 and bool(item["has_target"]) and item["image"].shape == (1, 32, 48)
    assert item["concepts"].shape == (5,) and bool(item["has_mask"])
    # pixel size at the model's frame size (the resize stretches: rows and columns differ) and the annotated HC
    assert item["pixel_mm"].tolist() == pytest.approx([0.2 * 54 / 32, 0.2 * 80 / 48])
    assert float(item["hc_mm"]) == pytest.approx(float(rows[1]["hc_mm"]))
    # GA by Hadlock from the annotated HC, read as the frame's gestational age
    hc = float(rows[1]["hc_mm"]) / 10
    assert float(rows[1]["ga"]) == pytest.approx(8.96 + 0.540 * hc + 0.0003 * hc**3, abs=0.01)
    assert float(item["ga"]) == pytest.approx(float(rows[1]["ga"]))
    # an HC that gives no fetal age (9.5 weeks, below the loader's 10) is written blank: unknown
    assert F._ga_text(10.0) == "" and F._ga_text(float("nan")) == ""


def test_more_faulted_twins_of_training_frames_keep_the_one_draw_set(tmp_path):
    root = _fake_hc18(tmp_path / "hc18", n=10)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["hc18-faults", "--root", str(root), "--out", str(one), "--size", "27", "40"]) == 0
    assert main(["hc18-faults", "--root", str(root), "--out", str(two), "--size", "27", "40", "--train-draws", "2"]) == 0
    rows1, rows2 = (list(csv.DictReader(open(o / "manifest.csv"))) for o in (one, two))
    train = {r["source"] for r in rows1 if r["split"] == "train"}
    assert train and len(rows2) == len(rows1) + len(train)
    assert [r for r in rows2 if not r["id"].endswith("_1")] == rows1  # the first draw is the one-draw set's
    for r in rows1:
        assert (one / r["image"]).read_bytes() == (two / r["image"]).read_bytes()
    extra = [r for r in rows2 if r["id"].endswith("_1")]
    assert {r["source"] for r in extra} == train and all(r["label"] == "NSP" and r["split"] == "train" for r in extra)
    assert len({(r["fault"], r["severity"]) for r in extra} | {(r["fault"], r["severity"]) for r in rows1 if r["label"] == "NSP"}) \
        == len(extra) + len(rows1) // 2  # every draw its own severity
    assert main(["hc18-faults", "--root", str(root), "--out", str(tmp_path / "bad"), "--train-draws", "0"]) == 2


def test_hadlock_ga_and_hc_are_inverse():
    from diffice.data.anomalies import HADLOCK_GA_RANGE, ga_weeks, hc_mm

    for ga in (14.0, 20.0, 30.5, 40.0):
        assert ga_weeks(hc_mm(ga)) == pytest.approx(ga, abs=1e-6)
    assert ga_weeks(175.0) == pytest.approx(8.96 + 0.540 * 17.5 + 0.0003 * 17.5**3)  # the formula, HC in cm
    assert HADLOCK_GA_RANGE == (14.0, 42.0) and math.isnan(ga_weeks(0.0)) and math.isnan(ga_weeks(math.nan))


def test_missing_hc18_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "set"
    assert main(["hc18-faults", "--root", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Zenodo" in err[0] and not out.exists()


@pytest.mark.skipif(not HC18.is_dir(), reason="HC18 not in ../shared/data")
def test_real_hc18_frames(tmp_path):
    out = tmp_path / "real"
    assert main(["hc18-faults", "--root", str(HC18), "--out", str(out), "--limit", "5"]) == 0
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert len(rows) == 10 and rows[0]["hc_mm"] == "44.30"
    # GA by Hadlock from the HC: 44.3 mm is about 11.4 weeks (below the regression's 14-week fit range)
    assert rows[0]["ga"] == rows[1]["ga"] == "11.38"
    with Image.open(out / rows[1]["image"]) as im:
        assert im.size == (400, 270)


def test_data_labelled_keeps_n_annotated_training_images(tmp_path, capsys):
    """data.labelled=N: N training images keep mask, HC and GA (a frame and its faulted twin together);
    val and test keep theirs; the draw is seeded; a bad N is one line naming the key."""
    from diffice.config import load_config
    from diffice.data.datamodule import DiffIceDataModule
    from diffice.errors import UserError

    root = _fake_hc18(tmp_path / "hc18", n=20)
    out = tmp_path / "set"
    assert main(["hc18-faults", "--root", str(root), "--out", str(out), "--size", "54", "80"]) == 0
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    train_masks = {r["mask"] for r in rows if r["split"] == "train"}
    assert len(train_masks) >= 4

    def items(extra):
        cfg = load_config([Path(__file__).resolve().parents[1] / "configs/data/hc18-faults.yaml"],
                          [f"data.manifest={out / 'manifest.csv'}", "data.image_size=[16,24]", *extra])
        dm = DiffIceDataModule(cfg)
        return {s: [dm.dataset(s)[i] for i in range(len(dm.dataset(s)))] for s in ("train", "test")}

    full = items([])
    part = items(["data.labelled=3"])
    labelled = [it for it in part["train"] if bool(it["has_mask"])]
    assert all(bool(it["has_mask"]) for it in full["train"])
    mask_of = {r["id"]: r["mask"] for r in rows}
    assert len(labelled) == 6 and len({mask_of[it["id"]] for it in labelled}) == 3  # 3 images, each with its faulted twin
    for it in part["train"]:
        if not bool(it["has_mask"]):
            assert math.isnan(float(it["hc_mm"])) and math.isnan(float(it["ga"])) and int(it["mask"].max()) == -1
    assert all(bool(it["has_mask"]) for it in part["test"]) and len(part["test"]) == len(full["test"])
    again = items(["data.labelled=3"])
    assert [it["id"] for it in again["train"] if bool(it["has_mask"])] == [it["id"] for it in labelled]
    with pytest.raises(UserError, match=r"data.labelled=999: .* annotated training images"):
        items(["data.labelled=999"])
