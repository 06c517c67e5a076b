"""A refused ``synthesize`` writes nothing, so the corrected rerun into the same --out works (issue 27);
nonsense options and config values are one line naming them, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diffice.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/preset/tiny.yaml")
PACK = ROOT / "models" / "demo"
CLASSES = ["background", "head", "bone", "th", "csp", "fp"]

pytestmark = pytest.mark.skipif(not (PACK / "synthesis.ckpt").is_file(), reason="no model pack")


def _overrides(tmp_path: Path) -> list[str]:
    return [f"paths.runs={tmp_path / 'runs'}", "wandb.mode=disabled", "trainer.progress_bar=false",
            f"synthesis.judge_ckpt={PACK / 'guide.ckpt'}", f"cf.oracle_ckpt={PACK / 'oracle.ckpt'}",
            "synthesis.two_stage=true", "synthesis.respacing='4'", "synthesis.jump_length=2", "synthesis.jump_n_sample=1"]


def layout(h: int = 64, w: int = 80, fp: bool = True) -> np.ndarray:
    lay = np.zeros((h, w), dtype=np.int64)
    yy, xx = np.mgrid[:h, :w]
    ry, rx = h / 2.6, w / 2.6
    head = ((yy - h / 2) / ry) ** 2 + ((xx - w / 2) / rx) ** 2 < 1
    lay[head] = 1
    lay[head & ~(((yy - h / 2) / (ry - 3)) ** 2 + ((xx - w / 2) / (rx - 3)) ** 2 < 1)] = 2
    lay[h // 2 - 6:h // 2 - 2, w // 2 - 4:w // 2 + 4] = 4   # csp
    lay[h // 2 - 1:h // 2 + 4, w // 2 - 6:w // 2 + 6] = 3   # th
    if fp:
        lay[h // 2 + 8:h // 2 + 14, w // 2 - 8:w // 2 + 8] = 5
    return lay


def png(path: Path, arr: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def _run(argv: list[str], capsys) -> tuple[int, list[str]]:
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def _nothing_written(out: Path) -> None:
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))


@pytest.fixture()
def files(tmp_path):
    from diffice.synthesis.layouts import apply_edit

    lay = layout()
    return {
        "frame": png(tmp_path / "frame.png", np.random.default_rng(0).integers(0, 255, lay.shape)),
        "own": png(tmp_path / "own.png", lay),
        "edited": png(tmp_path / "edited.png", apply_edit(lay, "remove:csp", CLASSES)),
        "no_fp": png(tmp_path / "no_fp.png", layout(fp=False)),
        "small": png(tmp_path / "small.png", layout(32, 40)),
        "truncated": tmp_path / "oracle-truncated.ckpt",
    }


@pytest.mark.parametrize("case", ["same_layout", "bad_source_layout", "missing_structure", "enlarged_cm_without_ga",
                                  "truncated_steering_checkpoint"])
def test_a_refused_edit_writes_nothing_and_the_corrected_rerun_works(tmp_path, capsys, files, case):
    ckpt = str(PACK / "synthesis.ckpt")
    out = tmp_path / "edit"
    base = ["synthesize", ckpt, TINY, *_overrides(tmp_path), "--edit", str(files["frame"]), "--out", str(out)]
    if case == "same_layout":
        bad, msg = ["--layout", str(files["own"]), "--source-layout", str(files["own"])], "equals the frame's own layout"
    elif case == "bad_source_layout":
        bad, msg = ["--layout", str(files["edited"]), "--source-layout", str(files["small"])], "small.png: layout is 40x32"
    elif case == "missing_structure":
        bad, msg = ["--anomaly", "banana_cerebellum", "--source-layout", str(files["no_fp"])], "the layout has no fp"
    elif case == "enlarged_cm_without_ga":
        bad, msg = ["--anomaly", "enlarged_cm", "--source-layout", str(files["own"])], "needs the gestational age"
    else:
        files["truncated"].write_bytes((PACK / "oracle.ckpt").read_bytes()[:5000])
        bad = ["--layout", str(files["edited"]), f"synthesis.segmenter_ckpt={files['truncated']}"]
        msg = "oracle-truncated.ckpt: not a readable checkpoint"
    code, err = _run([*base, *bad], capsys)
    assert code == 2 and len(err) == 1 and msg in err[0], err
    _nothing_written(out)
    fixed = {"same_layout": ["--layout", str(files["edited"]), "--source-layout", str(files["own"])],
             "bad_source_layout": ["--layout", str(files["edited"]), "--source-layout", str(files["own"])],
             "missing_structure": ["--anomaly", "banana_cerebellum", "--source-layout", str(files["own"])],
             "enlarged_cm_without_ga": ["--anomaly", "enlarged_cm", "--ga", "24", "--source-layout", str(files["own"])],
             "truncated_steering_checkpoint": ["--layout", str(files["edited"]), "--source-layout", str(files["own"])]}[case]
    code, err = _run([*base, *fixed], capsys)
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["edits"] == 1
    assert not (out / ".lock").exists()  # released


@pytest.mark.parametrize("argv, msg", [
    (["synthesis.limit=-2"], "key 'synthesis.limit': -2 is not allowed; it must be null or at least 1"),
    (["synthesis.limit=0"], "key 'synthesis.limit': 0 is not allowed"),
    (["synthesis.count=0"], "key 'synthesis.count': 0 is not allowed; it must be at least 1"),
    (["synthesis.batch_size=0"], "key 'synthesis.batch_size': 0 is not allowed"),
    (["--device", "banana"], "--device banana: not a device"),
    (["--count", "two"], "--count two: not a whole number"),
    (["--count", "0"], "--count 0: must be at least 1"),
])
def test_synthesize_test_nonsense_is_one_line_and_writes_nothing(tmp_path, capsys, argv, msg):
    out = tmp_path / "t"
    code, err = _run(["synthesize", str(PACK / "synthesis.ckpt"), TINY, *_overrides(tmp_path), "--test", "--out", str(out),
                      *argv], capsys)
    assert code == 2 and len(err) == 1 and msg in err[0], err
    _nothing_written(out)


@pytest.mark.parametrize("argv, msg", [
    (["--anomaly", "microcephaly", "--severity", "lots"], "--severity lots: not a number"),
    (["--anomaly", "microcephaly", "--severity", "nan"], "--severity nan: not a finite number"),
    (["--layout", "L", "--ga", "nan"], "--ga nan: not a number of weeks"),
])
def test_synthesize_bad_numbers_are_one_line(tmp_path, capsys, files, argv, msg):
    argv = [str(files["edited"]) if a == "L" else a for a in argv]
    out = tmp_path / "o"
    code, err = _run(["synthesize", str(PACK / "synthesis.ckpt"), TINY, *_overrides(tmp_path), "--edit", str(files["frame"]),
                      "--source-layout", str(files["own"]), *argv, "--out", str(out)], capsys)
    assert code == 2 and len(err) == 1 and msg in err[0], err
    _nothing_written(out)


def test_no_report_announces_no_report_and_stdout_has_no_blank_lines(tmp_path, capsys, files):
    out = tmp_path / "o"
    assert main(["synthesize", str(PACK / "synthesis.ckpt"), TINY, *_overrides(tmp_path), "--edit", str(files["frame"]),
                 "--layout", str(files["edited"]), "--source-layout", str(files["own"]), "--out", str(out), "--no-report"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.strip() for line in lines), lines
    assert "report.html" not in lines[-1] and not (out / "report.html").exists()


def test_a_checkpoint_folder_is_named_as_a_folder(tmp_path, capsys):
    code, err = _run(["synthesize", str(PACK), TINY, *_overrides(tmp_path), "--test", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(err) == 1 and "a folder, not a checkpoint file" in err[0] and "not found" not in err[0], err
