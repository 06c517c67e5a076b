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
