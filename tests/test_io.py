"""Atomic writes: complete or absent, readable by others, no temporary files left behind."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from diffice.io import atomic_path, atomic_write_text, save_png, to_uint8


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_and_is_world_readable(tmp_path):
    target = tmp_path / "a" / "out.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    mode = stat.S_IMODE(os.stat(target).st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_png_round_trip_and_uint8_mapping(tmp_path):
    from PIL import Image

    arr = to_uint8(np.array([[-1.0, 0.0, 1.0]]))
    assert arr.tolist() == [[0, 128, 255]]
    save_png(tmp_path / "x.png", arr)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "x.png")), arr)
    with pytest.raises(TypeError):
        save_png(tmp_path / "y.png", np.zeros((2, 2), dtype=np.float32))


def test_grid_of_grey_and_rgb_frames_and_one_palette_overlay():
    from diffice.io import PALETTE, make_grid, overlay

    grey = [np.full((4, 6), i, dtype=np.uint8) for i in range(5)]
    g = make_grid(grey, ncol=3, pad=1)
    assert g.shape == (2 * 5 + 1, 3 * 7 + 1) and g[0, 0] == 255 and g[6, 15] == 255 and g[6, 8] == 4
    assert np.array_equal(make_grid(grey[:1]), grey[0])  # one frame comes back as it is
    rgb = make_grid([np.dstack([f] * 3) for f in grey], ncol=3, pad=1)
    assert rgb.shape == (11, 22, 3) and np.array_equal(rgb[..., 0], g)
    cls = np.array([[0, 1, 2], [-1, 8, 1]])
    out = overlay(np.full((2, 3), 100, np.uint8), cls, alpha=1.0)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [100] * 3 and out[1, 0].tolist() == [100] * 3  # background, unknown: grey
    assert out[0, 1].tolist() == list(PALETTE[0]) and out[1, 1].tolist() == list(PALETTE[0])  # class 8 wraps to 1
    half = overlay(np.full((2, 3), 100, np.uint8), cls)  # 0.45 of the colour over the grey
    assert np.abs(half[0, 2].astype(int) - [100 * 0.55 + c * 0.45 for c in PALETTE[1]]).max() <= 1
    assert half[0, 0].tolist() == [100] * 3
