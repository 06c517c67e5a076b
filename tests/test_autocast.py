"""bf16 autocast of the counterfactual engine's networks (cf.autocast): outputs float32, close to fp32; under
the trainer's autocast (trainer.precision) the guidance stays float32 and fp16 stays within tolerance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffice.counterfactual import CFSettings, CounterfactualEngine
from diffice.counterfactual.engine import default_perceptual_l2
from diffice.errors import UserError
from diffice.nets.autocast import Autocast, with_precision
from tests.cf_fakes import FakeDenoiser, FakeFeatures, FakeGuide, frame, tiny_diffusion


def test_autocast_runs_the_network_in_bf16_and_returns_float32():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
    x = torch.randn(2, 1, 16, 20, requires_grad=True)
    seen = []
    net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    y = Autocast(net)(x)
    assert seen == [torch.bfloat16] and y.dtype == torch.float32
    ref = net(x)
    assert torch.allclose(y, ref, atol=0.05) and not torch.equal(y, ref)
    (g,) = torch.autograd.grad(y.sum(), x)  # guidance differentiates through it
    assert g.dtype == torch.float32 and torch.isfinite(g).all()
    # dict / list outputs are cast too; other attributes pass through
    wrapped = with_precision(lambda t: {"a": [t * 2], "n": torch.tensor([1])}, "bf16")
    out = wrapped(torch.ones(2, dtype=torch.bfloat16))
    assert out["a"][0].dtype == torch.float32 and out["n"].dtype == torch.int64
    assert with_precision(net, "none") is net
    with pytest.raises(UserError, match="cf.autocast"):
        with_precision(net, "fp8")


def test_engine_under_bf16_is_close_to_fp32_and_validated():
    feats = FakeFeatures()
    x = torch.stack([frame(i) for i in range(3)])
    out = {}
    for prec in ("none", "bf16"):
        s = CFSettings(method="diff-ice", tau=4, iterations=2, lambda_c=[40.0], lambda_p=30.0, seed=0, autocast=prec)
        e = CounterfactualEngine(tiny_diffusion(), FakeDenoiser(), FakeGuide(), feats.perceptual, s, feats.perceptual_l2)
        out[prec] = torch.stack([r.cf for r in e.explain(x, [0, 1, 2])])
    assert out["bf16"].dtype == torch.float32 and torch.isfinite(out["bf16"]).all()
    assert (out["bf16"] - out["none"]).abs().mean() < 0.05 and not torch.equal(out["bf16"], out["none"])
    with pytest.raises(UserError, match="cf.autocast"):
        CFSettings(autocast="half").validate()


def _frozen(net: nn.Module) -> nn.Module:
    return net.eval().requires_grad_(False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_guidance_gradient_is_float32_under_the_trainers_autocast(dtype):
    """Lightning's trainer.precision=16-mixed / bf16-mixed runs predict_step under autocast: the
    denoiser's forwards take it, the guidance (guide, perceptual network, loss, gradient) does not;
    cf.autocast=bf16 still runs the guidance's networks in bf16."""
    den, guide, perceptual = _frozen(FakeDenoiser()), _frozen(FakeGuide()), _frozen(FakeFeatures().perceptual)
    seen: dict[str, list] = {"denoiser": [], "guide": [], "perceptual": []}
    den.conv.register_forward_hook(lambda m, i, o: seen["denoiser"].append(o.dtype))
    guide.conv.register_forward_hook(lambda m, i, o: seen["guide"].append(o.dtype))
    perceptual.c1.register_forward_hook(lambda m, i, o: seen["perceptual"].append(o.dtype))
    x = torch.stack([frame(i) for i in range(3)])
    x0 = (x * 0.9).clamp(-1, 1)
    lam = torch.full((3,), 40.0)
    t = torch.full((3,), 3, dtype=torch.long)
    for prec, inner in (("none", torch.float32), ("bf16", torch.bfloat16)):
        s = CFSettings(method="diff-ice", tau=4, iterations=1, lambda_c=[40.0], lambda_p=30.0, seed=0, autocast=prec)
        e = CounterfactualEngine(tiny_diffusion(), den, guide, perceptual, s, default_perceptual_l2)
        ref = e.grad_x0(x0, e.loss.anchor(x), lam)
        p_ref = e.prob_sp(x0)
        for k in seen:
            seen[k].clear()
        with torch.autocast("cpu", dtype=dtype, cache_enabled=False):  # as Lightning's MixedPrecision does
            g = e.grad_x0(x0, e.loss.anchor(x), lam)
            p = e.prob_sp(x0)
            with torch.no_grad():
                e.diffusion.p_mean_variance(e.model, x, t)
        # the same bits as outside any autocast (at bf16 too: each network casts its own input, no cast is
        # shared between guide and perceptual network through autocast's cache)
        assert g.dtype == torch.float32 and torch.equal(g, ref) and torch.equal(p, p_ref)
        assert set(seen["guide"]) == set(seen["perceptual"]) == {inner}
        assert seen["denoiser"] == [dtype if prec == "none" else torch.bfloat16]  # the trainer's precision reaches it


@pytest.mark.usefixtures("one_thread")
def test_fp16_autocast_gives_counterfactuals_within_tolerance_of_fp32():
    """trainer.precision=16-mixed, as on a GPU (Lightning turns it into bf16-mixed on the CPU, so the
    CPU's fp16 autocast stands in): with the guidance in float32 only the denoiser's forwards run in
    fp16. A real (tiny, randomly perturbed) UNet as denoiser and perceptual network; tolerance stated
    in docs/counterfactuals.md: mean |Δ| < 0.005, max |Δ| < 0.05 in [-1, 1] units (measured: 0.0005,
    0.008; bf16 0.004, 0.04)."""
    from diffice.config import load_config
    from diffice.diffusion import build_diffusion
    from diffice.nets.features import _DDPMEncoder, perceptual_l2
    from diffice.nets.unet import build_unet
    from tests.conftest import ROOT

    cfg = load_config([ROOT / "configs/preset/tiny.yaml"], [
        "data.image_size=[32,40]", "unet.model_channels=16", "unet.channel_mult=[1,2]", "unet.attention_resolutions=[2]",
        "unet.num_head_channels=16", "diffusion.steps=100"])
    torch.manual_seed(0)
    unet = _frozen(build_unet(cfg))
    with torch.no_grad():  # away from the initialisation's zeros and identities
        for prm in unet.parameters():
            prm.add_(torch.randn_like(prm) * 0.05)
    x = torch.stack([frame(i) for i in range(4)])
    out = {}
    for name, ctx in (("fp32", torch.autocast("cpu", enabled=False)),
                      ("fp16", torch.autocast("cpu", dtype=torch.float16, cache_enabled=False))):
        s = CFSettings(method="diff-ice", tau=5, iterations=2, lambda_c=[40.0], lambda_p=30.0, seed=0, net_batch=4)
        e = CounterfactualEngine(build_diffusion(cfg, respacing="20"), unet, _frozen(FakeGuide()), _DDPMEncoder(unet), s,
                                 perceptual_l2)
        with ctx:
            out[name] = torch.stack([r.cf for r in e.explain(x, [0, 1, 2, 3])])
    d = (out["fp16"] - out["fp32"]).abs()
    assert out["fp16"].dtype == torch.float32 and torch.isfinite(out["fp16"]).all()
    assert 0 < d.mean() < 0.005 and d.max() < 0.05
