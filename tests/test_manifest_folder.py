"""``diffice manifest``: a folder of frames -> manifest.csv -> the four models -> counterfactuals; and the
folders it refuses (one line naming the file, exit status 2, nothing written)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffice.cli import main
from tests.conftest import ROOT

SIZES = [(53, 37), (32, 40), (45, 61)]  # (H, W): odd sizes, none the models' 32x40 but one
KINDS = ["png8", "jpeg_rgb", "png16", "png_rgb"]


def _frame(rng: np.random.Generator, h: int, w: int, sp: bool) -> np.ndarray:
    """A grey frame in [0, 1]: speckle with a bright ring (a skull) for SP, a fainter blob for NSP."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((yy - h / 2) / (0.35 * h), (xx - w / 2) / (0.35 * w))
    head = np.exp(-((r - 1.0) / 0.12) ** 2) if sp else 0.5 * np.exp(-r ** 2)
    return np.clip(0.15 + 0.6 * head + 0.15 * rng.random((h, w)), 0, 1)


def _save(path: Path, img: np.ndarray, kind: str) -> Path:
    if kind == "png16":
        Image.fromarray((img * 65535).astype(np.uint16)).save(path.with_suffix(".png"))
        return path.with_suffix(".png")
    rgb = np.stack([img, img * 0.9, img * 0.8], -1) if kind.endswith("rgb") else img
    out = path.with_suffix(".jpg" if kind.startswith("jpeg") else ".png")
    Image.fromarray((rgb * 255).astype(np.uint8)).save(out)
    return out


def _folder(root: Path, classes=("SP", "NSP", "TC"), per_class: int = 10, masks: int = 3) -> Path:
    """``root/frames/{class}/`` of ``per_class`` frames in turn PNG, RGB JPEG, 16-bit PNG and RGB PNG at
    odd sizes, file names ``{patient:03d}_{class}{i}`` (two frames a patient); the first ``masks`` of each
    class with a mask (head 1, background 0) in ``root/masks/``."""
    rng = np.random.default_rng(0)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for c, name in enumerate(classes):
        (root / "frames" / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = SIZES[i % len(SIZES)]
            stem = f"{(c * per_class + i) // 2:03d}_{name}{i}"
            _save(root / "frames" / name / stem, _frame(rng, h, w, name == "SP"), KINDS[i % len(KINDS)])
            if i < masks:
                yy, xx = np.mgrid[0:h, 0:w]
                head = np.hypot((yy - h / 2) / (0.35 * h), (xx - w / 2) / (0.35 * w)) < 1
                Image.fromarray(head.astype(np.uint8)).save(root / "masks" / f"{stem}.png")
    return root / "frames"


def _refused(argv: list[str], capsys, *names: str) -> str:
    """``diffice manifest argv`` exits 2 with one line on stderr naming each of ``names``."""
    assert main(["manifest", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for n in names:
        assert n in err[0], err[0]
    return err[0]


def test_folder_to_counterfactuals(tmp_path, tiny_overrides, capsys, one_thread):
    frames = _folder(tmp_path)
    masks = tmp_path / "masks"
    # a third class folder is refused by name; --labels maps it (trans-cerebellar frames are NSP)
    _refused([str(frames), "--masks", str(masks)], capsys, str(frames / "TC"), "not SP or NSP", "--labels")
    assert not (frames / "manifest.csv").exists()
    labels = tmp_path / "labels.csv"  # with a concept score for the oracle (empty = unknown)
    rows = [(p.relative_to(frames).as_posix(), "SP" if p.parent.name == "SP" else "nsp",
             "" if k % 5 == 0 else "0.9" if p.parent.name == "SP" else "0.2") for k, p in enumerate(sorted(frames.rglob("*.*")))]
    labels.write_text("image,label,qs_sharp\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    out = tmp_path / "data" / "manifest.csv"  # elsewhere than the frames: paths relative to it
    assert main(["manifest", str(frames), "--labels", str(labels), "--masks", str(masks), "--out", str(out),
                 "--patient-pattern", r"^(\d+)_", "--split-fractions", "0.6", "0.2", "0.2"]) == 0
    text = capsys.readouterr().out
    assert "frames: 30 (SP 10, NSP 20) of 15 patient(s)" in text and "masks: 9 of 30 frames, class indices 0-1" in text
    written = list(csv.DictReader(out.open()))
    assert len(written) == 30 and all((out.parent / r["image"]).is_file() for r in written)
    assert {Path(r["image"]).suffix for r in written} == {".png", ".jpg"}
    assert sum(bool(r["mask"]) for r in written) == 9 and {r["label"] for r in written} == {"SP", "NSP"}
    assert sorted({r["qs_sharp"] for r in written}) == ["", "0.2", "0.9"]
    by_patient: dict[str, set] = {}
    for r in written:
        by_patient.setdefault(r["patient"], set()).add(r["split"])
    assert len(by_patient) == 15 and all(len(s) == 1 for s in by_patient.values())  # no patient cut
    assert {r["split"] for r in written} == {"train", "val", "test"}

    # the pipeline of docs/your_data.md (make train-ddpm ... counterfactuals PRESET=tiny ARGS=...), 2 steps a model
    preset = str(ROOT / "configs/preset/tiny.yaml")
    args = [preset, *tiny_overrides, "data.source=manifest", f"data.manifest={out}", "data.classes=[background,head]",
            "data.concepts=[qs_sharp]",
            "ddpm.max_steps=2", "segmenter.max_steps=2", "guide.max_steps=2", "oracle.max_steps=2",
            "trainer.val_every_n_steps=2", "trainer.checkpoint_every_n_steps=2", "features.perceptual=segmenter",
            "segmenter.encoder=tu-mobilenetv3_small_050", "oracle.encoder=tu-mobilenetv3_small_050"]
    for cmd in ("train-ddpm", "train-segmenter", "train-classifier", "train-oracle"):
        assert main([cmd, *args]) == 0, cmd
    capsys.readouterr()
    cf = tmp_path / "cf"
    assert main(["counterfactuals", *args, "cf.tau=2", "cf.iterations=1", "cf.limit=2", "cf.batch_size=2",
                 f"cf.out={cf}", "cf.lambda_c=[40.0]", "--no-report"]) == 0
    assert "diff-ice: 2 frames" in capsys.readouterr().out
    records = [json.loads(p.read_text()) for p in sorted(cf.glob("frames/*/record.json"))]
    assert len(records) == 2 and all(0.0 <= r["p_cf"] <= 1.0 and 0.0 <= r["qs_cf"] <= 1.0 for r in records)
    assert json.loads((tmp_path / "runs" / "oracle" / "metrics.json").read_text())["val"]["mae_qs_sharp"] >= 0
    test_ids = {r["id"] for r in written if r["split"] == "test" and r["label"] == "NSP"}
    assert {r["id"] for r in records} <= test_ids


def test_unlabelled_folder_and_loader(tmp_path, capsys):
    """Images directly in DIR: an unlabelled set (DDPM only); every format loads as grey in [0, 1]."""
    from diffice.data.sources import load_image

    rng = np.random.default_rng(1)
    for i, kind in enumerate(KINDS):
        h, w = SIZES[i % len(SIZES)]
        img = _frame(rng, h, w, True)
        p = _save(tmp_path / f"f{i}", img, kind)
        got = load_image(p)
        assert got.shape == (h, w) and got.dtype == np.float32 and 0.0 <= got.min() <= got.max() <= 1.0
        if kind == "png16":  # 16-bit: divided by 65535, so the grey levels come back
            assert np.abs(got - img).max() < 1e-3
    assert main(["manifest", str(tmp_path), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "unlabelled 4" in out and "no labels" in out
    rows = list(csv.DictReader((tmp_path / "manifest.csv").open()))
    assert [r["label"] for r in rows] == [""] * 4 and len({r["patient"] for r in rows}) == 4


def _bad_folders(root: Path) -> list[tuple[str, list[str], list[str]]]:
    """(case, argv, names the one error line must hold) for each folder ``diffice manifest`` refuses."""
    cases = []
    empty = root / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no frames here")
    cases.append(("no images", [str(empty)], [str(empty), "no images"]))
    one = _folder(root / "one", classes=("SP",), per_class=3, masks=0)
    cases.append(("one class", [str(one)], [str(one), "only class SP"]))
    bad = _folder(root / "bad", classes=("SP", "NSP"), per_class=3, masks=0)
    (bad / "NSP" / "007_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cases.append(("unreadable file", [str(bad)], [str(bad / "NSP" / "007_broken.png"), "not a readable image"]))
    orphan = _folder(root / "orphan", classes=("SP", "NSP"), per_class=3, masks=1)
    Image.fromarray(np.zeros((32, 40), np.uint8)).save(root / "orphan" / "masks" / "999_gone.png")
    cases.append(("mask without image", [str(orphan), "--masks", str(root / "orphan" / "masks")],
                  [str(root / "orphan" / "masks" / "999_gone.png"), "mask without an image"]))
    third = _folder(root / "third", classes=("sp", "Nsp", "TC"), per_class=2, masks=0)
    cases.append(("third class", [str(third)], [str(third / "TC"), "not SP or NSP"]))
    lab = _folder(root / "lab", classes=("SP", "NSP"), per_class=2, masks=0)
    (root / "lab" / "labels.csv").write_text("image,label\nSP/000_SP0.png,SP\nNSP/missing.png,NSP\n")
    cases.append(("labels row without image", [str(lab), "--labels", str(root / "lab" / "labels.csv")],
                  [f"{root / 'lab' / 'labels.csv'}:3", "missing.png", "not found"]))
    (root / "lab" / "scores.csv").write_text("image,label,qs_x\nSP/000_SP0.png,SP,1\nNSP/001_NSP0.png,NSP,2\n")
    cases.append(("concept score", [str(lab), "--labels", str(root / "lab" / "scores.csv")],
                  [f"{root / 'lab' / 'scores.csv'}:3", "qs_x", "outside [0, 1]"]))
    twin = _folder(root / "twin", classes=("SP", "NSP"), per_class=2, masks=0)
    Image.fromarray(np.zeros((32, 40), np.uint8)).save(twin / "NSP" / "000_SP0.jpg")
    cases.append(("same name", [str(twin)], [str(twin / "SP" / "000_SP0.png"), str(twin / "NSP" / "000_SP0.jpg")]))
    bw = _folder(root / "bw", classes=("SP", "NSP"), per_class=2, masks=1)
    Image.fromarray(np.where(np.arange(53 * 37).reshape(53, 37) % 3, 255, 0).astype(np.uint8)).save(
        root / "bw" / "masks" / "000_SP0.png")
    cases.append(("picture as mask", [str(bw), "--masks", str(root / "bw" / "masks")],
                  [str(root / "bw" / "masks" / "000_SP0.png"), "only 0 and 255"]))
    cases.append(("patient pattern", [str(lab), "--patient-pattern", r"^p(\d+)-"], [str(lab / "NSP"), "--patient-pattern"]))
    return cases


@pytest.mark.parametrize("case", ["no images", "one class", "unreadable file", "mask without image", "third class",
                                  "labels row without image", "concept score",
                                  "same name", "picture as mask", "patient pattern"])
def test_bad_folders_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    argv, names = {c: (a, n) for c, a, n in _bad_folders(tmp_path)}[case]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    _refused(argv, capsys, *names)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
