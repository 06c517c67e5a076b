"""Robust guidance: the guide trains on the DDPM's one-step estimates x0|t for t < cf.tau."""

from __future__ import annotations

import pytest
import torch

from diffice.config import load_config
from diffice.errors import UserError
from diffice.modules.classifier import ClassifierModule
from tests.cf_fakes import FakeDenoiser, frame, tiny_diffusion
from tests.conftest import ROOT


def _module(tiny_overrides, *extra):
    cfg = load_config([ROOT / "configs/preset/tiny.yaml"],
                      [*tiny_overrides, "segmenter.encoder=tu-mobilenetv3_small_050", *extra])
    return ClassifierModule(cfg, load_pretrained=False)


def test_estimates_replace_a_fraction_of_frames(tiny_overrides):
    x = torch.stack([frame(i) for i in range(8)])
    off = _module(tiny_overrides)
    assert off.one_step_estimates(x) is x  # x0_prob = 0: the paper's training, no DDPM needed
    on = _module(tiny_overrides, "guide.x0_prob=1.0", "cf.tau=3")
    d = tiny_diffusion()
    on._x0 = (FakeDenoiser(), d, 3)
    torch.manual_seed(0)
    got = on.one_step_estimates(x)
    model = FakeDenoiser()  # built before seeding: its init draws from the global generator
    torch.manual_seed(0)
    pick = torch.rand(8) < 1.0
    t = torch.randint(0, 3, (8,))
    want = d.p_mean_variance(model, d.q_sample(x, t, torch.randn_like(x)), t, clip_denoised=True)["pred_xstart"]
    assert pick.all() and torch.allclose(got, want, atol=1e-6)
    half = _module(tiny_overrides, "guide.x0_prob=0.5", "cf.tau=3")
    half._x0 = (FakeDenoiser(), d, 3)
    torch.manual_seed(1)
    mixed = half.one_step_estimates(x)
    same = [torch.equal(a, b) for a, b in zip(mixed, x)]
    assert 0 < sum(same) < 8  # some frames kept, some replaced


def test_missing_ddpm_is_one_line(tiny_overrides, tmp_path):
    m = _module(tiny_overrides, "guide.x0_prob=0.5", f"guide.ddpm_ckpt={tmp_path / 'none.ckpt'}")
    with pytest.raises(UserError, match="none.ckpt: checkpoint not found"):
        m.one_step_estimates(torch.zeros(2, 1, 32, 40))
