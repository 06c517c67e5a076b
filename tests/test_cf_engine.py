"""The guided reverse process on tiny fakes: eq. 2 shift, where gradients flow, chaining,
seeding, the λc search and adaptive stopping."""

from __future__ import annotations

import pytest
import torch

from diffice.counterfactual import CFSettings, CounterfactualEngine, frame_generators, guided_sample
from diffice.errors import UserError
from tests.cf_fakes import FakeDenoiser, FakeFeatures, FakeGuide, frame, tiny_diffusion


def make_engine(method="diff-ice", tau=4, iterations=2, lambda_c=(40.0,), adaptive=False, **kw):
    s = CFSettings(method=method, tau=tau, iterations=iterations, lambda_c=list(lambda_c), lambda_p=30.0,
                   adaptive=adaptive, seed=0, **kw)
    feats = FakeFeatures()
    return CounterfactualEngine(tiny_diffusion(), FakeDenoiser(), FakeGuide(), feats.perceptual, s, feats.perceptual_l2)


def batch(n=4):
    return torch.stack([frame(i) for i in range(n)])


def test_guided_sample_shifts_mean_by_minus_sigma_g():
    g = torch.Generator().manual_seed(0)
    out = {k: torch.randn(3, 1, 4, 5, generator=g) for k in ("mean", "log_variance")}
    out["variance"] = out["log_variance"].exp()
    grad, noise = torch.randn(3, 1, 4, 5, generator=g), torch.randn(3, 1, 4, 5, generator=g)
    t = torch.tensor([5, 1, 0])
    s = guided_sample(out, grad, t, noise)
    expect = out["mean"] - out["variance"] * grad + (out["log_variance"] / 2).exp() * noise
    assert torch.allclose(s[:2], expect[:2])
    assert torch.allclose(s[2], (out["mean"] - out["variance"] * grad)[2])  # no noise at t = 0


def _loss_grad(engine, x0, anchor, lam):
    x0 = x0.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(engine.loss(x0, anchor, lam).sum(), x0)
    return g


def test_diffice_gradient_is_taken_at_x0_without_the_denoiser():
    e = make_engine("diff-ice")
    for p in e.model.parameters():
        p.requires_grad_(True)  # even trainable weights must not receive gradients
    x = batch(3)
    anchor, lam = e.loss.anchor(x), torch.full((3,), 40.0)
    t = torch.full((3,), 2, dtype=torch.long)
    x_t = e.diffusion.q_sample(x, t, torch.randn_like(x))
    e.model.grad_modes.clear()
    sample, used = e._step_x0(x_t, t, anchor, lam, frame_generators(0, [0, 1, 2]))
    assert used == 1 and e.model.grad_modes == [False]  # one call, no graph through the denoiser
    assert all(p.grad is None for p in e.model.parameters())
    with torch.no_grad():
        out = e.diffusion.p_mean_variance(e.model, x_t, t)
    g = _loss_grad(e, out["pred_xstart"], anchor, lam)
    noise = torch.stack([torch.randn(x.shape[1:], generator=gen) for gen in frame_generators(0, [0, 1, 2])])
    assert torch.allclose(sample, guided_sample(out, g, t, noise), atol=1e-6)
    assert g.abs().sum() > 0


def test_xt_gradient_flows_through_the_denoiser():
    e = make_engine("diff-ice1-xt")
    x = batch(2)
    anchor, lam = e.loss.anchor(x), torch.full((2,), 40.0)
    t = torch.full((2,), 3, dtype=torch.long)
    x_t = e.diffusion.q_sample(x, t, torch.randn_like(x))
    e.model.grad_modes.clear()
    sample, used = e._step_xt(x_t, t, anchor, lam, frame_generators(0, [0, 1]))
    assert used == 1 and e.model.grad_modes == [True]
    x_in = x_t.clone().requires_grad_(True)
    out = e.diffusion.p_mean_variance(e.model, x_in, t)
    (g_xt,) = torch.autograd.grad(e.loss(out["pred_xstart"], anchor, lam).sum(), x_in)
    g_x0 = _loss_grad(e, out["pred_xstart"], anchor, lam)
    assert not torch.allclose(g_xt, g_x0, atol=1e-4)  # the chain rule through the denoiser matters
    noise = torch.stack([torch.randn(x.shape[1:], generator=gen) for gen in frame_generators(0, [0, 1])])
    out = {k: v.detach() for k, v in out.items()}
    assert torch.allclose(sample, guided_sample(out, g_xt, t, noise), atol=1e-6)


def test_dime_scales_by_sqrt_alpha_bar_and_costs_a_chain_per_step(monkeypatch):
    e = make_engine("dime", tau=3)
    x = batch(2)
    anchor, lam = e.loss.anchor(x), torch.full((2,), 40.0)
    t = torch.full((2,), 2, dtype=torch.long)
    x_t = e.diffusion.q_sample(x, t, torch.randn_like(x))
    results = {}
    for c in (0.0, 1.0):
        monkeypatch.setattr(e, "grad_x0", lambda x0, a, lam_, c=c: torch.full_like(x0, c))
        results[c], used = e._step_dime(x_t, t, anchor, lam, frame_generators(0, [0, 1]))
        assert used == 3  # this step's call plus a 2-step unguided chain to a clean image
    with torch.no_grad():
        out = e.diffusion.p_mean_variance(e.model, x_t, t)
    abar = float(e.diffusion.array("alphas_cumprod")[2])
    assert torch.allclose(results[0.0] - results[1.0], out["variance"] / abar**0.5, atol=1e-5)
    e.model.frames_seen = 0
    e.explain(x, [0, 1])
    assert e.model.frames_seen == 2 * (3 + 2 + 1)


def test_iterations_chain_and_stay_anchored_to_the_original(monkeypatch):
    e = make_engine("diff-ice", iterations=3)
    x = batch(2)
    anchor = e.loss.anchor(x)
    calls = []
    original = e._pass

    def spy(x_in, anc, lam, gens):
        out, used = original(x_in, anc, lam, gens)
        calls.append((x_in.clone(), [a.clone() for a in anc], out.clone()))
        return out, used

    monkeypatch.setattr(e, "_pass", spy)
    (r0, r1) = e.explain(x, [7, 8])
    assert len(calls) == 3 and r0.iterations == 3 and r0.nfe == 3 * 4
    assert torch.equal(calls[0][0], x)
    for k in range(2):
        assert torch.equal(calls[k + 1][0], calls[k][2])  # iteration k+1 starts from k's output
    for _, anc, _ in calls:
        assert all(torch.equal(a, b) for a, b in zip(anc, anchor, strict=True))
    assert torch.equal(r0.iterates[1], calls[1][2][0]) and torch.equal(r1.cf, calls[2][2][1])
    assert not torch.allclose(calls[2][2], x, atol=1e-3)


@pytest.mark.parametrize("method", ["diff-ice", "diff-ice1-xt", "dime", "diff-ice ddim"])
def test_outputs_do_not_depend_on_batch_size(method):
    method, *encode = method.split()
    encode = encode[0] if encode else "noise"
    e = make_engine(method, tau=3, iterations=2, lambda_c=(40.0, 80.0), encode=encode)
    x = batch(4)
    together = e.explain(x, [10, 11, 12, 13])
    alone = [e.explain(x[i : i + 1], [10 + i])[0] for i in range(4)]
    for a, b in zip(together, alone, strict=True):
        assert a.lambda_c == b.lambda_c and a.nfe == b.nfe
        assert torch.allclose(a.cf, b.cf, atol=1e-5)
    other_seed = make_engine(method, tau=3, iterations=2, lambda_c=(40.0, 80.0), encode=encode)
    other_seed.s.seed = 1
    same = torch.allclose(other_seed.explain(x[:1], [10])[0].cf, together[0].cf, atol=1e-3)
    assert same == (encode == "ddim")  # the seed draws the noise; a DDIM pass draws none


def test_lambda_search_retries_only_unflipped_frames(monkeypatch):
    e = make_engine("diff-ice1", lambda_c=(40.0, 60.0, 80.0))
    # frame k flips once λc reaches needed[k] (inf: never)
    needed = {0: 40.0, 1: 60.0, 2: 80.0, 3: float("inf")}
    seen = []

    def fake_run(x, anchor, lam, gens, passes):
        ids = [int(round(float(v))) for v in x[:, 0, 0, 0]]
        seen.append((lam, ids))
        probs = [[0.9 if lam >= needed[i] else 0.2] for i in ids]
        return [[torch.full((1, 2, 2), float(i))] for i in ids], probs, [5] * len(ids), [[0.0]] * len(ids)

    monkeypatch.setattr(e, "_run", fake_run)
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous()
    rs = e.explain(x, [0, 1, 2, 3])
    assert seen == [(40.0, [0, 1, 2, 3]), (60.0, [1, 2, 3]), (80.0, [2, 3])]
    assert [r.lambda_c for r in rs] == [40.0, 60.0, 80.0, 80.0]
    assert [r.flipped for r in rs] == [True, True, True, False]
    assert [r.nfe for r in rs] == [5, 10, 15, 15]
    assert rs[3].p_lambdas == [0.2, 0.2, 0.2]


def test_lambda_search_continue_goes_on_from_the_last_counterfactual(monkeypatch):
    """lambda_search=continue: a retry starts from the previous λc's counterfactual (not the input),
    runs retry_iterations passes, and the frame's iterates, probabilities, times and nfe add up."""
    e = make_engine("diff-ice", iterations=3, lambda_c=(40.0, 60.0, 80.0), lambda_search="continue", retry_iterations=2)
    starts = []

    def step_pass(x_in, anchor, lam, gens):  # every pass adds λc / 1000 to the frame's first pixel
        starts.append((float(lam[0]), x_in[:, 0, 0, 0].tolist()))
        out = x_in.clone()
        out[:, 0, 0, 0] += lam / 1000
        return out, 4

    monkeypatch.setattr(e, "_pass", step_pass)
    # frame 0 is SP once its value passes 0.1, frame 1 once it passes 0.5 (never within the budget)
    monkeypatch.setattr(e, "prob_sp", lambda x: torch.where(x[:, 0, 0, 0] > x[:, 0, 0, 1], 0.9, 0.1))
    x = torch.zeros(2, 1, 2, 2)
    x[0, 0, 0, 1], x[1, 0, 0, 1] = 0.1, 0.5
    r0, r1 = e.explain(x, [0, 1])
    # λc 40: three passes for both; λc 60 and 80: two passes each for frame 1 only, from where it was
    assert [lam for lam, _ in starts] == [40.0] * 3 + [60.0] * 2 + [80.0] * 2
    assert starts[3][1] == pytest.approx([0.12]) and starts[5][1] == pytest.approx([0.24])
    assert r0.iterations == 3 and r0.attempts == 1 and r0.nfe == 12 and r0.flipped
    assert r1.iterations == 7 and r1.attempts == 3 and r1.nfe == 28 and not r1.flipped
    assert len(r1.p_iters) == len(r1.seconds_iters) == 7 and r1.p_lambdas == pytest.approx([0.1, 0.1, 0.1])
    assert float(r1.cf[0, 0, 0]) == pytest.approx(0.12 + 0.12 + 0.16)
    assert float(r1.iterates[2][0, 0, 0]) == pytest.approx(0.12) and float(r1.iterates[4][0, 0, 0]) == pytest.approx(0.24)
    restart = make_engine("diff-ice", iterations=3, lambda_c=(40.0, 60.0), lambda_search="restart")
    starts.clear()
    monkeypatch.setattr(restart, "_pass", step_pass)
    monkeypatch.setattr(restart, "prob_sp", e.prob_sp)
    restart.explain(x[1:], [1])
    assert starts[3] == (60.0, [0.0])  # the paper's search starts again from the input


def test_adaptive_stopping_shrinks_the_batch_and_saves_nfe(monkeypatch):
    sizes = []

    def identity_pass(x_in, anchor, lam, gens):
        sizes.append(x_in.shape[0])
        return x_in.clone(), 4

    nfe = {}
    for adaptive in (False, True):
        e = make_engine("diff-ice", iterations=4, adaptive=adaptive, stop_threshold=0.9)
        monkeypatch.setattr(e, "_pass", identity_pass)
        # the "guide" is confident exactly for bright frames
        monkeypatch.setattr(e, "prob_sp", lambda x: torch.sigmoid(20 * x.mean(dim=(1, 2, 3))))
        x = torch.tensor([0.5, -0.5, 0.5]).view(3, 1, 1, 1).expand(3, 1, 4, 4).contiguous()
        sizes.clear()
        rs = e.explain(x, [0, 1, 2])
        nfe[adaptive] = [r.nfe for r in rs]
        if adaptive:
            assert sizes == [3, 1, 1, 1] and [r.iterations for r in rs] == [1, 4, 1]
        else:
            assert sizes == [3, 3, 3, 3] and [r.iterations for r in rs] == [4, 4, 4]
    assert nfe[False] == [16, 16, 16] and nfe[True] == [4, 16, 4]


def test_loss_is_a_per_frame_sum():
    e = make_engine()
    x = batch(3)
    anchor, lam = e.loss.anchor(x), torch.tensor([40.0, 60.0, 80.0])
    x0 = x.flip(-1)
    per_frame = e.loss(x0, anchor, lam)
    assert per_frame.shape == (3,)
    for i in range(3):
        one = e.loss(x0[i : i + 1], [a[i : i + 1] for a in anchor], lam[i : i + 1])
        assert torch.allclose(one, per_frame[i : i + 1], atol=1e-6)
    g_all = e.grad_x0(x0, anchor, lam)
    g_one = e.grad_x0(x0[:1], [a[:1] for a in anchor], lam[:1])
    assert torch.allclose(g_all[:1], g_one, atol=1e-6)  # λ does not scale with batch size


def test_settings_are_validated():
    with pytest.raises(UserError, match="cf.lambda_search"):
        make_engine(lambda_search="resume")
    with pytest.raises(UserError, match="cf.retry_iterations"):
        make_engine(retry_iterations=0)
    with pytest.raises(UserError, match="cf.method"):
        make_engine("fastdime")
    with pytest.raises(UserError, match="cf.tau"):
        make_engine(tau=21)
    with pytest.raises(UserError, match="cf.lambda_c"):
        make_engine(lambda_c=())


def test_fastdime_gradient_at_the_previous_estimate(monkeypatch):
    e = make_engine("diff-ice1", tau=4, iterations=1, grad_at="previous")
    seen = []
    real = e.grad_x0

    def spy(x0, anchor, lam):
        seen.append(x0.detach().clone())
        return real(x0, anchor, lam)

    monkeypatch.setattr(e, "grad_x0", spy)
    x = batch(2)
    e.explain(x, [0, 1])
    assert len(seen) == 4
    assert torch.equal(seen[0], x)  # the first step's gradient is taken at the input itself
    assert not torch.allclose(seen[1], x, atol=1e-3)  # later ones at the previous step's x0


def test_fastdime_mask_holds_the_frame_to_the_input(monkeypatch):
    e = make_engine("diff-ice1", tau=4, iterations=1, mask=True, mask_warmup=1)
    x = batch(2)
    keep = torch.zeros_like(x)
    keep[..., :, :20] = 1.0  # hold the left half
    monkeypatch.setattr(e, "_keep_mask", lambda x0, x_in: keep)
    cf = torch.stack([r.cf for r in e.explain(x, [0, 1])])
    assert torch.equal(cf[..., :20], x[..., :20])
    assert not torch.allclose(cf[..., 20:], x[..., 20:], atol=1e-3)


def test_fastdime_mask_is_the_dilated_normalised_difference():
    e = make_engine("diff-ice1", tau=4, mask=True, mask_dilation=3, mask_threshold=0.5)
    x_in = torch.zeros(1, 1, 8, 8)
    x0 = x_in.clone()
    x0[0, 0, 4, 4] = 1.0   # the one changed pixel: normalised difference 1 there, 0 elsewhere
    keep = e._keep_mask(x0, x_in)
    assert keep[0, 0, 3:6, 3:6].sum() == 0 and keep.sum() == 64 - 9  # 3x3 neighbourhood released


def test_fastdime_options_are_validated():
    with pytest.raises(UserError, match="cf.grad_at"):
        CFSettings(tau=3, grad_at="next").validate(20)
    with pytest.raises(UserError, match="apply to diff-ice"):
        CFSettings(tau=3, method="dime", mask=True).validate(20)
    with pytest.raises(UserError, match="mask_dilation"):
        CFSettings(tau=3, mask=True, mask_dilation=4).validate(20)


@pytest.mark.parametrize("opts", [{"grad_at": "previous"}, {"mask": True, "mask_warmup": 1}])
def test_fastdime_options_do_not_depend_on_batch_size(opts):
    e = make_engine("diff-ice", tau=3, iterations=2, **opts)
    x = batch(3)
    together = e.explain(x, [10, 11, 12])
    alone = [e.explain(x[i : i + 1], [10 + i])[0] for i in range(3)]
    for a, b in zip(together, alone, strict=True):
        assert torch.allclose(a.cf, b.cf, atol=1e-5)


def test_flipped_and_the_lambda_search_use_the_guides_threshold():
    """A guide with a decision threshold (guide.calibrate) decides flips by it, not by 0.5."""
    s = CFSettings(method="diff-ice", tau=4, iterations=1, lambda_c=[0.0, 40.0], lambda_p=30.0, seed=0)
    feats = FakeFeatures()
    x = batch(3)
    plain = CounterfactualEngine(tiny_diffusion(), FakeDenoiser(), FakeGuide(), feats.perceptual, s, feats.perceptual_l2)
    p = [r.p_cf for r in plain.explain(x, [0, 1, 2])]
    guide = FakeGuide()
    guide.register_buffer("threshold", torch.tensor(min(p) / 2))  # every λc = 0 counterfactual is SP at it
    low = CounterfactualEngine(tiny_diffusion(), FakeDenoiser(), guide, feats.perceptual, s, feats.perceptual_l2)
    assert low.threshold == pytest.approx(min(p) / 2)
    res = low.explain(x, [0, 1, 2])
    assert all(r.flipped and r.threshold == pytest.approx(min(p) / 2) for r in res)
    assert all(r.attempts == 1 and r.lambda_c == 0.0 for r in res)  # no second λc needed
    guide.threshold.fill_(1.0)  # nothing is SP: every λc is tried
    high = CounterfactualEngine(tiny_diffusion(), FakeDenoiser(), guide, feats.perceptual, s, feats.perceptual_l2)
    assert all(not r.flipped and r.attempts == 2 for r in high.explain(x, [0, 1, 2]))


def test_a_coarse_gradient_keeps_its_length_and_loses_its_texture():
    from diffice.counterfactual.engine import coarse
    from diffice.metrics.target import low_pass

    gen = torch.Generator().manual_seed(0)
    texture = torch.randn(2, 1, 32, 40, generator=gen)
    ramp = torch.linspace(-1, 1, 40).view(1, 1, 1, 40).expand(2, 1, 32, 40) * torch.tensor([1.0, 1.5]).view(2, 1, 1, 1)
    g = texture + 0.5 * ramp
    assert coarse(g, 0.0) is g
    c = coarse(g, 3.0)
    assert torch.allclose(c.flatten(1).norm(dim=1), g.flatten(1).norm(dim=1), rtol=1e-5)  # each frame its own length
    cos = torch.nn.functional.cosine_similarity
    assert (cos(c.flatten(1), ramp.flatten(1)) > 0.9).all()                     # the coarse part is what is left
    assert (cos(g.flatten(1), ramp.flatten(1)) < 0.5).all()
    assert torch.allclose(c / c.flatten(1).norm(dim=1).view(-1, 1, 1, 1),
                          low_pass(g, 3.0) / low_pass(g, 3.0).flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    with pytest.raises(UserError, match="cf.grad_sigma"):
        CFSettings(tau=3, grad_sigma=-1.0).validate(20)


def test_a_coarse_gradient_changes_the_counterfactual_and_is_batch_invariant():
    plain = make_engine("diff-ice", tau=3, iterations=1, net_batch=4)
    e = make_engine("diff-ice", tau=3, iterations=1, grad_sigma=2.0, net_batch=4)  # networks at one batch size
    x = batch(3)
    together = e.explain(x, [10, 11, 12])
    alone = [e.explain(x[i : i + 1], [10 + i])[0] for i in range(3)]
    for a, b in zip(together, alone, strict=True):
        assert torch.equal(a.cf, b.cf)
    assert not torch.equal(together[0].cf, plain.explain(x[:1], [10])[0].cf)


def test_ddim_encoding_gives_back_the_input_where_guidance_is_off_and_draws_no_noise():
    """cf.encode=ddim: inversion then DDIM steps return about the input at λc = λp = 0 (a noised pass
    does not), the guided pass is the hand-written loop (DDIM step − Σ·g), and no seed changes it."""
    from diffice.counterfactual.ddim import ddim_invert
    from diffice.counterfactual.engine import reconstruct

    d, model = tiny_diffusion(), FakeDenoiser()
    x = batch(3) * 0.5
    gens = frame_generators(0, [0, 1, 2])
    back = reconstruct(d, model, x, 4, gens, encode="ddim")
    noised = reconstruct(d, model, x, 4, frame_generators(0, [0, 1, 2]))
    err_ddim, err_noise = (back - x).abs().mean(), (noised - x).abs().mean()
    assert err_ddim < 0.2 * err_noise, (err_ddim, err_noise)

    e = make_engine(tau=4, iterations=1, encode="ddim")
    anchor, lam = e.loss.anchor(x), torch.full((3,), 40.0)
    out, used = e._pass(x, anchor, lam, frame_generators(0, [0, 1, 2]))
    assert used == 8
    x_t = ddim_invert(e.diffusion, e.model, x, 4)
    for i in reversed(range(4)):
        t = torch.full((3,), i)
        with torch.no_grad():
            o = e.diffusion.p_mean_variance(e.model, x_t, t)
        x_t = e.diffusion.ddim_mean(o, x_t, t) - o["variance"] * _loss_grad(e, o["pred_xstart"], anchor, lam)
    torch.testing.assert_close(out, x_t, atol=1e-5, rtol=1e-5)
    other = make_engine(tau=4, iterations=1, encode="ddim")
    other.s.seed = 5
    torch.testing.assert_close(other.explain(x, [0, 1, 2])[0].cf, e.explain(x, [0, 1, 2])[0].cf)
    assert not torch.allclose(out, reconstruct(d, model, x, 4, gens, encode="ddim"), atol=1e-3)  # guidance acts


def test_ddim_encoding_is_refused_where_it_does_not_apply():
    for kw, key in ((dict(method="dime"), "cf.method=dime"), (dict(grad_at="previous"), "cf.grad_at=previous"),
                    (dict(mask=True), "cf.mask=true"), (dict(noise_convention="dime"), "cf.noise_convention=dime")):
        method = kw.pop("method", "diff-ice")
        with pytest.raises(UserError, match=f"cf.encode=ddim .*{key}"):
            make_engine(method, encode="ddim", **kw)
    with pytest.raises(UserError, match="cf.encode: 'fast'"):
        make_engine(encode="fast")
