"""bf16 autocast of the counterfactual engine's networks (cf.autocast): outputs float32, close to fp32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffice.counterfactual import CFSettings, CounterfactualEngine
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
