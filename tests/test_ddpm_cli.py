"""The train-ddpm and sample commands, end to end in-process, and their one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffice.cli import main
from tests.conftest import ROOT

TINY = str(ROOT / "configs/preset/tiny.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def trained(tiny_overrides, tmp_path):
    """A 3-step tiny DDPM trained on the phantom through the CLI."""
    code = main(["train-ddpm", TINY, *tiny_overrides, "ddpm.max_steps=3", "ddpm.sample_every_n_steps=0"])
    assert code == 0
    ckpt = tmp_path / "runs" / "ddpm" / "last.ckpt"
    assert ckpt.is_file() and (ckpt.parent / "config.yaml").is_file()
    return ckpt


def test_train_then_sample(trained, tmp_path, capsys):
    out = tmp_path / "samples"
    assert main(["sample", str(trained), "--count", "3", "--out", str(out), "--steps", "4", "--batch-size", "2"]) == 0
    frames = sorted(out.glob("0*.png"))
    assert [f.name for f in frames] == ["000000.png", "000001.png", "000002.png"]
    arr = np.asarray(Image.open(frames[0]))
    assert arr.shape == (32, 40) and arr.dtype == np.uint8
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape[0] > 32 and grid.shape[1] > 40
    assert json.loads((out / "sample.json").read_text())["steps"] == "4"
    # frame 1 alone, batch of 1: the same picture (per-frame seeding); a rerun keeps finished frames
    (out / "000001.png").unlink()
    before = (out / "000000.png").stat().st_mtime_ns
    assert main(["sample", str(trained), "--count", "3", "--out", str(out), "--steps", "4", "--batch-size", "1"]) == 0
    assert (out / "000000.png").stat().st_mtime_ns == before
    again = np.asarray(Image.open(out / "000001.png")).astype(int)
    other = tmp_path / "other"
    assert main(["sample", str(trained), "--count", "2", "--out", str(other), "--steps", "4"]) == 0
    assert np.abs(np.asarray(Image.open(other / "000001.png")).astype(int) - again).max() <= 1
    capsys.readouterr()
    # other settings into the same folder are refused rather than mixed
    assert main(["sample", str(trained), "--count", "3", "--out", str(out), "--steps", "4", "--seed", "9"]) == 2
    assert "other settings" in capsys.readouterr().err


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_sample_refuses_bad_checkpoints(trained, tmp_path, capsys):
    out = str(tmp_path / "s")
    seg = tmp_path / "seg.ckpt"
    torch.save({"diffice": {"kind": "segmenter", "config": {}}, "state_dict": {}}, seg)
    assert main(["sample", str(seg), "--count", "1", "--out", out]) == 2
    assert "is a segmenter checkpoint, expected a ddpm checkpoint" in _one_error_line(capsys)
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    assert main(["sample", str(junk), "--count", "1", "--out", out]) == 2
    assert "junk.ckpt" in _one_error_line(capsys)
    assert main(["sample", str(tmp_path / "missing.ckpt"), "--count", "1", "--out", out]) == 2
    assert "not found" in _one_error_line(capsys)
    # a data config whose frame size differs from the checkpoint's
    assert main(["sample", str(trained), "data.image_size=[64,80]", "--count", "1", "--out", out]) == 2
    assert "data.image_size=[32, 40]" in _one_error_line(capsys)
    assert main(["sample", str(trained), "--count", "1", "--out", out, "--steps", "ddim999"]) == 2
    assert "respacing" in _one_error_line(capsys)
    assert not (tmp_path / "s").exists()  # nothing half-written


def test_train_ddpm_refuses_other_kind_in_run_folder(tiny_overrides, tmp_path, capsys):
    run = tmp_path / "runs" / "ddpm"
    run.mkdir(parents=True)
    torch.save({"diffice": {"kind": "oracle", "config": {}}, "state_dict": {}}, run / "last.ckpt")
    assert main(["train-ddpm", TINY, *tiny_overrides, "ddpm.max_steps=1"]) == 2
    assert "expected a ddpm checkpoint" in _one_error_line(capsys)
    assert main(["train-ddpm", TINY, *tiny_overrides, "unet.typo=1"]) == 2
    assert "unet.typo" in _one_error_line(capsys)
