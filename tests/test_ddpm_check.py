"""`diffice ddpm-check`: the unguided pass the counterfactuals start from, scored per structure."""

from __future__ import annotations

import json

import pytest
import torch

from diffice.cli import main
from diffice.counterfactual import CFSettings, CounterfactualEngine, frame_generators
from diffice.counterfactual.check import ddpm_check
from diffice.counterfactual.engine import noise_to, reconstruct
from diffice.errors import UserError
from tests.cf_fakes import FakeDenoiser, FakeFeatures, frame, tiny_diffusion
from tests.conftest import ROOT

TINY = str(ROOT / "configs/preset/tiny.yaml")


class ZeroGuide(torch.nn.Module):
    """A guide whose loss has no gradient: the engine's pass is then the unguided pass."""

    def forward(self, x):
        return torch.full((x.shape[0],), 50.0) + 0.0 * x.sum()


def test_reconstruct_is_the_engines_pass_without_guidance():
    d, model = tiny_diffusion(), FakeDenoiser()
    feats = FakeFeatures()
    s = CFSettings(method="diff-ice1", tau=4, iterations=1, lambda_c=[0.0], lambda_p=0.0, seed=3)
    engine = CounterfactualEngine(d, model, ZeroGuide(), feats.perceptual, s, feats.perceptual_l2)
    x = torch.stack([frame(i) for i in range(3)])
    guided = [r.cf for r in engine.explain(x, [5, 6, 7])]
    plain = reconstruct(d, model, x, 4, frame_generators(3, [5, 6, 7]))
    for a, b in zip(guided, plain, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_noise_conventions_differ_by_one_step():
    d = tiny_diffusion()
    x = torch.stack([frame(0)])
    ones, zeros = torch.ones_like(x), torch.zeros_like(x)
    # noise level read through q_sample: x = 1, no noise -> sqrt(alpha_bar)
    a = noise_to(d, ones, 5, "diffice", frame_generators(0, [0]))
    b = noise_to(d, ones, 5, "dime", frame_generators(0, [0]))
    want_a = d.q_sample(ones, torch.tensor([4]), zeros)
    want_b = d.q_sample(ones, torch.tensor([5]), zeros)
    noise = torch.randn(x.shape[1:], generator=frame_generators(0, [0])[0])[None]
    sd_a = (1 - want_a.flatten()[0] ** 2).sqrt()
    sd_b = (1 - want_b.flatten()[0] ** 2).sqrt()
    assert torch.allclose(a, want_a + sd_a * noise, atol=1e-5)
    assert torch.allclose(b, want_b + sd_b * noise, atol=1e-5)
    with pytest.raises(UserError, match="cf.noise_convention"):
        CFSettings(tau=5, noise_convention="dimes").validate(20)
    with pytest.raises(UserError, match="tau < 20"):
        CFSettings(tau=20, noise_convention="dime").validate(20)


def test_ddpm_check_scores_structures_and_sees_damage():
    d = tiny_diffusion()
    x = torch.stack([frame(i) for i in range(4)])

    def seg(img):  # two "structures": bright and dark halves of the grey range
        return torch.cat([(img < 0).float(), (img >= 0).float(), torch.zeros_like(img)], dim=1)

    class Perfect(torch.nn.Module):
        """Predicts eps exactly for this batch's frames (the true x0 is known): recon == input."""

        def forward(self, xt, t):
            return torch.cat([torch.zeros_like(xt), torch.zeros_like(xt)], 1)

    res = ddpm_check(d, FakeDenoiser(), seg, [(x, [0, 1, 2, 3])], tau=6, classes=["background", "head", "bone"], keep=2)
    assert res["frames"] == 4 and res["tau"] == 6 and len(res["examples"]) == 2
    assert set(res["dice"]) == {"head", "bone"} and res["dice"]["bone"] is None
    assert 0.0 <= res["dice"]["head"] < 1.0  # a random denoiser damages the frames
    assert [f["index"] for f in res["per_frame"]] == [0, 1, 2, 3]  # per frame, for paired comparisons
    assert sum(f["psnr"] for f in res["per_frame"]) / 4 == pytest.approx(res["psnr"])
    judged = ddpm_check(d, FakeDenoiser(), seg, [(x, [5, 6, 7, 8])], tau=6, classes=["background", "head", "bone"],
                        judge=lambda img: {"brain": img.mean((1, 2, 3)) > 0})
    calls = [(f["brain_input"], f["brain_reconstruction"]) for f in judged["per_frame"]]
    assert [f["index"] for f in judged["per_frame"]] == [5, 6, 7, 8]
    assert [a for a, _ in calls] == (x.mean((1, 2, 3)) > 0).tolist()
    assert sum(b for _, b in calls) / 4 == pytest.approx(judged["sononet"]["reconstruction"]["value"])
    iv = res["dice_intervals"]["head"]  # the pooled Dice with its bootstrap interval over the 4 frames
    assert iv["value"] == pytest.approx(res["dice"]["head"]) and iv["low"] <= iv["value"] <= iv["high"] and iv["n"] == 4
    # the same check with tau=1 and no noise left to remove scores close to the input
    small = ddpm_check(d, Perfect(), seg, [(x, [0, 1, 2, 3])], tau=1, classes=["background", "head", "bone"])
    assert small["psnr"] > res["psnr"]


@pytest.mark.usefixtures("one_thread")
def test_ddpm_check_command(tiny_overrides, tmp_path, capsys):
    assert main(["train-ddpm", TINY, *tiny_overrides, "ddpm.max_steps=2", "ddpm.sample_every_n_steps=0",
                 "trainer.val_every_n_steps=2"]) == 0
    ckpt = tmp_path / "runs" / "ddpm" / "last.ckpt"
    metrics = (ckpt.parent / "logs" / "metrics.csv").read_text()
    assert "val/check_psnr" in metrics  # logged during DDPM validation (no segmenter yet: PSNR only)
    capsys.readouterr()
    out = tmp_path / "check"
    assert main(["ddpm-check", str(ckpt), TINY, *tiny_overrides, "--count", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "taken to tau=5 of 20 (by noise" in text and "PSNR" in text and "PSNR only" in text
    res = json.loads((out / "ddpm_check.json").read_text())
    assert res["frames"] >= 1 and res["tau"] == 5 and res["trained_steps"] == 2 and res["encode"] == "noise"
    # cf.encode=ddim: the check takes the frames there and back as such a counterfactual pass does
    assert main(["ddpm-check", str(ckpt), TINY, *tiny_overrides, "cf.encode=ddim", "--count", "3", "--out", str(out)]) == 0
    assert "(by DDIM inversion)" in capsys.readouterr().out
    assert json.loads((out / "ddpm_check.json").read_text())["encode"] == "ddim"
    assert main(["ddpm-check", str(ckpt), TINY, *tiny_overrides, "cf.encode=fast"]) == 2
    assert "cf.encode: 'fast'" in capsys.readouterr().err
    assert (out / "ddpm_check.png").is_file()
    # a checkpoint of the wrong kind as --segmenter: one line, exit 2
    assert main(["ddpm-check", str(ckpt), TINY, *tiny_overrides, "--segmenter", str(ckpt)]) == 2
    assert "expected a segmenter or classifier checkpoint" in capsys.readouterr().err
    assert main(["ddpm-check", str(ckpt), TINY, *tiny_overrides, "cf.tau=99"]) == 2
    assert "cf.tau" in capsys.readouterr().err
