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


def test_adversarial_frames_stay_in_the_ball_raise_the_loss_and_leave_the_guide_as_it_was(tiny_overrides):
    x = torch.stack([frame(i) for i in range(6)])
    labels = torch.tensor([0, 1, 0, 1, -1, 0])
    off = _module(tiny_overrides)
    assert off.adversarial(x, labels) is x  # adv_eps = 0: the paper's training
    m = _module(tiny_overrides, "guide.adv_eps=0.05", "guide.adv_steps=3")
    m.pos_weight.fill_(1.0)
    torch.manual_seed(0)
    with torch.no_grad():  # an untrained guide's head starts at zero: give it a gradient to follow
        for p in m.guide.predictor.parameters():
            if not p.any():
                p.normal_(0.0, 0.1)
    m.train()
    stats = {k: v.clone() for k, v in m.guide.state_dict().items()}
    adv = m.adversarial(x, labels)
    radius = 0.05 * (x.shape[-1] * x.shape[-2]) ** 0.5
    assert m.guide.training and not adv.requires_grad
    assert all(torch.equal(v, m.guide.state_dict()[k]) for k, v in stats.items())  # BatchNorm statistics untouched
    assert all(p.grad is None for p in m.parameters())
    assert float((adv - x).flatten(1).norm(dim=1).max()) <= radius * (1 + 1e-4)
    assert float(adv.abs().max()) <= 1.0 and not torch.equal(adv, x)
    m.eval()
    with torch.no_grad():
        assert float(m._loss(m.guide(adv), labels)) > float(m._loss(m.guide(x), labels))


@pytest.mark.parametrize("override,key", [("guide.adv_eps=-0.1", "guide.adv_eps"), ("guide.adv_steps=0", "guide.adv_steps")])
def test_bad_adversarial_keys_name_themselves(tiny_overrides, override, key):
    with pytest.raises(UserError, match=key):
        _module(tiny_overrides, override)
