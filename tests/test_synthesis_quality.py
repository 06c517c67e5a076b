"""Issue 25, image quality: the low-frequency anchor to the pre-alignment frame (ILVR) and the
washed-out measure of synthetic frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_synthesis import CLASSES, TINY, _cfg, _layout, _net_and_diffusion, _overrides


def test_lowpass_keeps_a_constant_and_the_anchor_sets_the_mean(tmp_path):
    from diffice.diffusion import generators_for
    from diffice.synthesis.sampler import Anchor, lowpass, make_condition, sample

    c = torch.full((2, 1, 32, 40), -0.7)
    assert torch.allclose(lowpass(c, 8), c) and torch.allclose(lowpass(c, 5), c)  # 5 does not divide 32: ragged blocks
    from diffice.diffusion import build_diffusion

    net, diffusion = _net_and_diffusion(tmp_path)
    lay = torch.from_numpy(_layout())[None].repeat(2, 1, 1)
    cond = make_condition(lay, [0, 0], [25.0, 25.0], len(CLASSES), "cpu")
    anchor = Anchor(diffusion, torch.tensor([-0.5, 0.3]).view(2, 1, 1, 1).expand(2, 1, 32, 40), factor=8, until=0.0)
    assert [anchor.active(k) for k in (4, 1, 0)] == [True, True, False]  # never the last step, to x_0
    assert not Anchor(diffusion, c, 8, 0.5).active(2) and Anchor(diffusion, c, 8, 0.5).active(3)  # 3 >= 0.5 * 5
    diffusion = build_diffusion(_cfg(tmp_path), "50")  # fine steps: the last, unanchored one moves the frame little
    anchor = Anchor(diffusion, anchor.ref, 8, 0.0)
    free = sample(diffusion, net, cond, generators_for(0, [0, 1]), w=2.0)
    held = sample(diffusion, net, cond, generators_for(0, [0, 1]), w=2.0, anchor=anchor)
    means = held.mean(dim=(1, 2, 3))
    # each sample's brightness follows its own reference (the untrained net's free samples do not)
    assert abs(float(means[0]) + 0.5) < 0.1 and abs(float(means[1]) - 0.3) < 0.1, means
    assert not torch.allclose(free.mean(dim=(1, 2, 3)), means, atol=0.15)
    # the anchor replaces low frequencies only: what it leaves differs between the two samples
    assert (held - lowpass(held, 8)).abs().mean() > 0.01
    again = sample(diffusion, net, cond, generators_for(0, [0, 1]), w=2.0, anchor=anchor)
    assert torch.equal(held, again)


def _frames(n: int, rng, corner: float = 0.0, dark: float = 30.0) -> np.ndarray:
    """Sector frames (uint8, 32x40): black outside a trapezoid, tissue of floor ``dark`` inside;
    ``corner``: the grey level outside the sector."""
    yy, xx = np.mgrid[:32, :40]
    sector = np.abs(xx - 20) < 6 + yy * 0.4
    x = rng.normal(dark + 60, 25, (n, 32, 40)).clip(dark, 255)
    return np.where(sector, x, corner).round().astype(np.uint8)


def test_washed_out_flags_grey_corners_and_lifted_tissue_not_real_frames():
    from diffice.synthesis.metrics import washed_out

    rng = np.random.default_rng(0)
    real, other = _frames(200, rng), _frames(200, rng)
    m = washed_out(np.concatenate([_frames(10, rng), _frames(6, rng, corner=40), _frames(4, rng, dark=110)]), real, other)
    assert m["washed_out_n"] == 20 and m["washed_out"] == pytest.approx(10 / 20)
    assert m["washed_out_corner"] == pytest.approx(6 / 20) and m["washed_out_dark"] == pytest.approx(4 / 20)
    assert m["washed_out_ci"]["k"] == 10 and m["washed_out_ci"]["low"] < 0.5 < m["washed_out_ci"]["high"]
    assert m["washed_out_control"] <= 0.03  # real frames the thresholds were not set on
    assert m["washed_out_thresholds"]["corner"] == 10 and m["washed_out_thresholds"]["corner_pixels"] > 0
    # a few grey levels above black still look black; a visibly grey corner does not
    assert washed_out(_frames(5, rng, corner=6), real)["washed_out"] == 0.0
    assert washed_out(_frames(5, rng, corner=20), real)["washed_out"] == 1.0


@pytest.mark.parametrize("value,msg", [("bogus", "synthesis.anchor: 'bogus' is not one of none, prealign"),
                                       ("prealign", "has no pre-alignment encoder")])
def test_anchor_errors_are_one_line_exit_2(tmp_path, capsys, value, msg):
    from diffice.cli import main

    ov = _overrides(tmp_path / "runs")
    assert main(["train-synthesis", TINY, *ov, "synthesis.prealign=false", "synthesis.max_steps=1"]) == 0
    out = tmp_path / "out"
    code = main(["synthesize", str(tmp_path / "runs" / "synthesis" / "last.ckpt"), TINY, *ov, "--layout",
                 str(_png(tmp_path / "l.png", _layout())), "--out", str(out), f"synthesis.anchor={value}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and msg in err[0], err
    assert not out.exists()


def _png(path, arr):
    from PIL import Image

    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def test_the_demo_redraws_its_own_folder_when_the_settings_changed(tmp_path, capsys):
    from diffice.experiments.demo import redraw_if_changed
    from diffice.runfolder import write_stamp
    from diffice.synthesis.run import RUN_KIND

    old = {"ckpt": "m.ckpt", "seed": 0, "data": {}, "synthesis": {"anchor": "none", "guidance": 2.0}}
    new = {**old, "synthesis": {"anchor": "prealign", "guidance": 2.0}}
    out = tmp_path / "synthesis"
    write_stamp(out, RUN_KIND, old)
    (out / "layouts").mkdir()
    redraw_if_changed(out, RUN_KIND, old)  # same settings: kept (a rerun resumes it)
    assert (out / "layouts").is_dir()
    redraw_if_changed(out, RUN_KIND, new)
    assert not out.exists() and "synthesis.anchor" in capsys.readouterr().out
    other = tmp_path / "other"
    write_stamp(other, RUN_KIND.__class__("downstream", "study", items=(), fix="-"), {})
    redraw_if_changed(other, RUN_KIND, new)  # another kind of run is not the demo's to delete
    assert other.is_dir()
