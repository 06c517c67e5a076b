"""The diffusion maths against closed-form identities, an independent hand-written chain, and diffusers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffice.diffusion import (
    GaussianDiffusion,
    build_diffusion,
    discretized_gaussian_log_likelihood,
    generators_for,
    linear_betas,
    named_betas,
    normal_kl,
    space_timesteps,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _diffusion(keep=None, T=1000, learn_sigma=True):
    return GaussianDiffusion(linear_betas(T), keep, learn_sigma=learn_sigma)


# ----------------------------------------------------------------------------- schedule and respacing


def test_linear_schedule_is_scaled_to_T():
    b = linear_betas(1000)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
    b = linear_betas(100)
    assert b[0] == pytest.approx(1e-3) and b[-1] == pytest.approx(0.2)
    c = named_betas("cosine", 50)
    assert np.all(c > 0) and np.all(c <= 0.999) and np.all(np.diff(np.cumprod(1 - c)) < 0)
    with pytest.raises(ValueError, match="unknown noise schedule"):
        named_betas("quadratic", 10)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("ddim5", {0, 200, 400, 600, 800}),
        ("5", {0, 250, 500, 749, 999}),  # evenly spread, both ends, rounded
        ("2,3", {0, 499, 500, 750, 999}),  # two sections of 500 steps
        ("1,1,1", {0, 334, 667}),  # first section one step longer (1000 = 334 + 333 + 333)
    ],
)
def test_space_timesteps_known_values(spec, expected):
    assert space_timesteps(1000, spec) == expected


def test_space_timesteps_counts_and_errors():
    assert len(space_timesteps(1000, "400")) == 400
    assert space_timesteps(1000, "1000") == set(range(1000))
    assert space_timesteps(1000, 10) == space_timesteps(1000, "10")
    for bad in ("ddim999", "2000", "a", "0", "600,600"):
        with pytest.raises(ValueError):
            space_timesteps(1000, bad)


def test_space_timesteps_matches_diffusers_spacings():
    """Checks DESIGN.md's facts: "ddimN" == diffusers "leading"; "N" == "linspace" except that
    guided-diffusion accumulates the stride in floats before rounding, so at exact .5 ties it
    can round the other way (N = 21: step 499 where linspace gives 500)."""
    from diffusers import DDPMScheduler

    def diffusers_steps(n, spacing):
        s = DDPMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
        s.set_timesteps(n)
        return set(s.timesteps.tolist())

    for n in (10, 20, 25, 50, 100, 200, 250, 500):
        assert space_timesteps(1000, f"ddim{n}") == diffusers_steps(n, "leading")
    for n in (10, 20, 25, 50, 100, 200, 250, 400, 500, 1000):
        assert space_timesteps(1000, str(n)) == diffusers_steps(n, "linspace")
    ours, theirs = space_timesteps(1000, "21"), diffusers_steps(21, "linspace")
    assert ours ^ theirs == {499, 500}


def test_respaced_betas_reproduce_alphas_cumprod_at_kept_steps():
    base_abar = np.cumprod(1 - linear_betas(1000))
    for spec in ("400", "ddim50", "10,15,20", "1"):
        keep = sorted(space_timesteps(1000, spec))
        d = _diffusion(keep)
        assert d.num_timesteps == len(keep)
        assert d.timestep_map.tolist() == keep
        np.testing.assert_allclose(np.cumprod(1 - d.array("betas")), base_abar[keep], rtol=1e-12)


def test_unrespaced_diffusion_is_the_training_schedule(tiny_cfg):
    d = build_diffusion(tiny_cfg)
    assert d.num_timesteps == tiny_cfg.diffusion.steps
    np.testing.assert_allclose(d.array("betas"), linear_betas(tiny_cfg.diffusion.steps), rtol=1e-10)
    r = build_diffusion(tiny_cfg, "ddim10")
    assert r.timestep_map.tolist() == list(range(0, 100, 10))


def test_build_diffusion_bad_respacing_is_user_error(tiny_cfg):
    from diffice.errors import UserError

    with pytest.raises(UserError, match="respacing"):
        build_diffusion(tiny_cfg, "5000")


# ----------------------------------------------------------------------------- forward process and posterior


def test_q_sample_and_x0_from_eps_invert_each_other():
    d = _diffusion(space_timesteps(1000, "50"))
    x0 = torch.rand(4, 1, 8, 10) * 2 - 1
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 10, 30, 49])
    xt = d.q_sample(x0, t, eps)
    abar = torch.tensor(d.array("alphas_cumprod")[t.numpy()], dtype=torch.float32).view(-1, 1, 1, 1)
    torch.testing.assert_close(xt, abar.sqrt() * x0 + (1 - abar).sqrt() * eps)
    torch.testing.assert_close(d.predict_xstart_from_eps(xt, t, eps), x0, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(d.predict_eps_from_xstart(xt, t, x0), eps, atol=2e-3, rtol=1e-3)


def test_posterior_of_known_x0_is_bayes_rule():
    """q(x_{k-1} | x_k, x_0) from the product of q(x_{k-1} | x_0) and q(x_k | x_{k-1}), in float64."""
    keep = sorted(space_timesteps(1000, "10,15,20"))
    d = _diffusion(keep)
    base_abar = np.cumprod(1 - linear_betas(1000))
    x0 = torch.tensor([[[[-0.7, 0.2, 0.9]]]], dtype=torch.float64).float()
    xt = torch.tensor([[[[0.3, -1.4, 2.0]]]]).float()
    for k in (1, 7, 20, len(keep) - 1):
        a_prev, a = base_abar[keep[k - 1]], base_abar[keep[k]]
        alpha = a / a_prev
        precision = 1 / (1 - a_prev) + alpha / (1 - alpha)
        var = 1 / precision
        mean = var * (math.sqrt(a_prev) * x0.double() / (1 - a_prev) + math.sqrt(alpha) * xt.double() / (1 - alpha))
        m, v, logv = d.q_posterior_mean_variance(x0, xt, torch.tensor([k]))
        torch.testing.assert_close(m.double(), mean, atol=1e-5, rtol=1e-5)
        assert float(v) == pytest.approx(var, rel=1e-5)
        assert float(logv) == pytest.approx(math.log(var), rel=1e-5)


def test_learned_variance_end_points_and_first_step():
    keep = sorted(space_timesteps(1000, "20"))
    d = _diffusion(keep)
    betas, post = d.array("betas"), d.array("posterior_variance")
    t = torch.arange(len(keep))
    ones = torch.ones(len(keep), 1, 1, 1)
    upper = d.log_variance_from_output(ones, t, 4).flatten()  # v = +1 -> log beta_k
    lower = d.log_variance_from_output(-ones, t, 4).flatten()  # v = -1 -> log posterior variance
    middle = d.log_variance_from_output(0 * ones, t, 4).flatten()  # v = 0 -> geometric mean
    torch.testing.assert_close(upper, torch.tensor(np.log(betas), dtype=torch.float32))
    torch.testing.assert_close(lower[1:], torch.tensor(np.log(post[1:]), dtype=torch.float32))
    torch.testing.assert_close(middle, (upper + lower) / 2)
    # k = 0: the posterior variance is 0; guided-diffusion uses that of k = 1 (not a 1e-20 clamp)
    assert post[0] == 0.0
    assert float(lower[0]) == pytest.approx(math.log(post[1]), rel=1e-6)
    assert math.exp(float(lower[0])) > 1e-6


def test_fixed_variance_without_learn_sigma():
    d = _diffusion(space_timesteps(1000, "10"), learn_sigma=False)
    logv = d.log_variance_from_output(None, torch.arange(10), 4).flatten()
    betas, post = d.array("betas"), d.array("posterior_variance")
    torch.testing.assert_close(logv[1:], torch.tensor(np.log(betas[1:]), dtype=torch.float32))
    assert float(logv[0]) == pytest.approx(math.log(post[1]), rel=1e-6)


# ----------------------------------------------------------------------------- reverse process


class FixedModel(torch.nn.Module):
    """A deterministic stand-in for the UNet: eps = 0.3 x + t / 2000, v = 0.8 tanh(x)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t):
        self.calls.append(t.clone())
        eps = 0.3 * x + t.view(-1, 1, 1, 1).float() / 2000
        return torch.cat([eps, 0.8 * torch.tanh(x)], dim=1)


def test_full_chain_with_fixed_noise_matches_hand_written_loop():
    T, keep = 50, [0, 7, 19, 33, 49]
    betas = [1e-4 * 1000 / T + (0.02 - 1e-4) * 1000 / T * i / (T - 1) for i in range(T)]
    abar_all = np.cumprod([1 - b for b in betas])
    d = GaussianDiffusion(linear_betas(T), keep)
    gen = torch.Generator().manual_seed(3)
    x_T = torch.randn(2, 1, 4, 5, generator=gen)
    noises = [torch.randn(2, 1, 4, 5, generator=gen) for _ in keep]

    model = FixedModel()
    x = x_T.clone()
    for k in reversed(range(len(keep))):
        x = d.p_sample(model, x, torch.full((2,), k), noise=noises[k])["sample"]
    assert [int(c[0]) for c in model.calls] == list(reversed(keep))  # the model sees original steps

    # the same chain from first principles, in float64
    def post_var(k):
        a, a_prev = abar_all[keep[k]], (abar_all[keep[k - 1]] if k > 0 else 1.0)
        return (1 - a / a_prev) * (1 - a_prev) / (1 - a)

    ref = x_T.double()
    for k in reversed(range(len(keep))):
        a = abar_all[keep[k]]
        a_prev = abar_all[keep[k - 1]] if k > 0 else 1.0
        beta = 1 - a / a_prev
        eps = 0.3 * ref + keep[k] / 2000
        v = 0.8 * torch.tanh(ref)
        x0 = ((ref - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)
        mean = math.sqrt(a_prev) * beta / (1 - a) * x0 + math.sqrt(1 - beta) * (1 - a_prev) / (1 - a) * ref
        min_log = math.log(post_var(k) if k > 0 else post_var(1))
        frac = (v + 1) / 2
        log_var = frac * math.log(beta) + (1 - frac) * min_log
        ref = mean + (torch.exp(0.5 * log_var) * noises[k].double() if k > 0 else 0)
    torch.testing.assert_close(x.double(), ref, atol=1e-4, rtol=1e-4)

    # the loop helper gives the same chain when fed the same noise through generators
    gens = [torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)]
    a = d.p_sample_loop(FixedModel(), (2, 1, 4, 5), generators=gens)
    gens = [torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)]
    x = torch.stack([torch.randn(1, 4, 5, generator=g) for g in gens])
    for k in reversed(range(len(keep))):
        noise = torch.stack([torch.randn(1, 4, 5, generator=g) for g in gens]) if k > 0 else torch.zeros_like(x)
        x = d.p_sample(FixedModel(), x, torch.full((2,), k), noise=noise)["sample"]
    torch.testing.assert_close(a, x)


def test_sampling_is_per_sample_seeded():
    d = _diffusion(space_timesteps(1000, "5"))
    both = d.p_sample_loop(FixedModel(), (2, 1, 4, 5), generators=generators_for(7, [3, 4]))
    alone = d.p_sample_loop(FixedModel(), (1, 1, 4, 5), generators=generators_for(7, [4]))
    torch.testing.assert_close(both[1:], alone)
    other = d.p_sample_loop(FixedModel(), (1, 1, 4, 5), generators=generators_for(8, [4]))
    assert not torch.allclose(other, alone)


def test_no_noise_at_last_step_and_guidance_shift_is_minus_variance_times_g():
    d = _diffusion(space_timesteps(1000, "10"))
    x = torch.randn(3, 1, 4, 5)
    g = torch.randn_like(x)
    noise = torch.randn_like(x)
    for k in (0, 4, 9):
        t = torch.full((3,), k)
        seen = {}

        def cond_fn(x_, t_, out, seen=seen):
            seen["args"] = (x_, t_, out)
            return g

        plain = d.p_sample(FixedModel(), x, t, noise=noise)
        guided = d.p_sample(FixedModel(), x, t, noise=noise, cond_fn=cond_fn)
        assert seen["args"][0] is x and torch.equal(seen["args"][1], t) and "pred_xstart" in seen["args"][2]
        torch.testing.assert_close(guided["mean"] - plain["mean"], -plain["variance"] * g)
        torch.testing.assert_close(guided["sample"] - plain["sample"], -plain["variance"] * g)
        if k == 0:
            torch.testing.assert_close(plain["sample"], plain["mean"])  # no noise at t == 0
            assert float(plain["variance"].min()) > 1e-6  # so the last guided step still moves
        else:
            assert not torch.allclose(plain["sample"], plain["mean"])


def test_reverse_step_matches_diffusers_ddpm_scheduler_except_last_variance():
    """diffusers' DDPMScheduler (learned_range, respaced by custom timesteps) takes the same step
    for k > 0; at k = 0 it clamps the posterior variance to 1e-20 where we take that of k = 1."""
    from diffusers import DDPMScheduler

    keep = sorted(space_timesteps(1000, "10,15,20"))
    d = _diffusion(keep)
    sched = DDPMScheduler(num_train_timesteps=1000, variance_type="learned_range", clip_sample=True)
    sched.set_timesteps(timesteps=list(reversed(keep)))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 6, 7, generator=gen)
    output = torch.cat([torch.randn(2, 1, 6, 7, generator=gen), torch.rand(2, 1, 6, 7, generator=gen) * 2 - 1], 1)

    def model(x_, t_):
        return output

    for k in (1, 5, 17, len(keep) - 1):
        theirs = sched.step(output, keep[k], x, generator=torch.Generator().manual_seed(k)).prev_sample
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(k))
        ours = d.p_sample(model, x, torch.full((2,), k), noise=noise)
        torch.testing.assert_close(ours["sample"], theirs, atol=2e-4, rtol=1e-4)
    ours = d.p_sample(model, x, torch.zeros(2, dtype=torch.long), noise=torch.zeros_like(x))
    theirs = sched.step(output, keep[0], x).prev_sample
    torch.testing.assert_close(ours["sample"], theirs, atol=2e-4, rtol=1e-4)  # the mean agrees
    their_var = torch.exp(sched._get_variance(keep[0], output[:, 1:]))
    assert float(their_var.min()) < 1e-8 < float(ours["variance"].min())


# ----------------------------------------------------------------------------- losses


def test_normal_kl_matches_torch_distributions():
    m1, m2 = torch.randn(5), torch.randn(5)
    lv1, lv2 = torch.randn(5), torch.randn(5)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), ref)
    assert float(normal_kl(m1, lv1, m1, lv1).abs().max()) < 1e-6


def test_discretized_likelihood_is_a_distribution_over_256_levels():
    levels = torch.arange(256, dtype=torch.float32) / 127.5 - 1  # uint8 -> [-1, 1]
    for mean, log_scale in ((0.1, -2.0), (-0.97, -4.0), (0.9, -3.0), (0.02, -6.5)):
        ll = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean), torch.full_like(levels, log_scale))
        assert float(ll.exp().sum()) == pytest.approx(1.0, abs=2e-3)
        assert int(ll.argmax()) == int(round((mean + 1) * 127.5))
    wide = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, 0.99), torch.full_like(levels, -1.0))
    assert float(wide.exp().sum()) == pytest.approx(1.0, abs=1e-6)
    assert int(wide.argmax()) == 255 and float(wide.min()) > -30  # the open top bin takes the tail


def test_hybrid_loss_trains_variance_through_vb_and_mean_through_mse():
    d = _diffusion()

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(0.5))
            self.b = torch.nn.Parameter(torch.tensor(0.1))

        def forward(self, x, t):
            return torch.cat([self.a * x, self.b * torch.ones_like(x)], 1)

    m = Tiny()
    x0 = torch.rand(4, 1, 6, 6) * 2 - 1
    t = torch.tensor([0, 1, 500, 999])
    losses = d.training_losses(m, x0, t, torch.randn_like(x0))
    assert all(losses[k].shape == (4,) for k in ("loss", "mse", "vb"))
    assert torch.isfinite(losses["vb"]).all() and (losses["vb"] >= 0).all()
    losses["vb"].sum().backward()
    assert m.a.grad is None or float(m.a.grad) == 0.0  # the mean is held fixed in the bound
    assert float(m.b.grad.abs()) > 0
    m.zero_grad()
    losses = d.training_losses(m, x0, t, torch.randn_like(x0))
    torch.testing.assert_close(losses["loss"], losses["mse"] + 0.001 * 1000 * losses["vb"])
    losses["mse"].sum().backward()
    assert float(m.a.grad.abs()) > 0 and (m.b.grad is None or float(m.b.grad) == 0.0)


def test_perfect_eps_gives_zero_mse_and_vb_is_decoder_nll_at_t0():
    d = _diffusion(space_timesteps(1000, "10"))
    x0 = torch.rand(2, 1, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)

    class Oracle(torch.nn.Module):
        def forward(self, x, t):
            return torch.cat([noise, torch.zeros_like(x)], 1)

    t = torch.tensor([0, 5])
    losses = d.training_losses(Oracle(), x0, t, noise)
    assert float(losses["mse"].max()) < 1e-10
    xt = d.q_sample(x0, t, noise)
    out = d.p_mean_variance_from_output(Oracle()(xt, t), xt, t, clip_denoised=False)
    nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
    assert float(losses["vb"][0]) == pytest.approx(float(nll[0].mean() / math.log(2)), rel=1e-5)


def test_ddim_steps_match_diffusers_ddim_and_ddim_inverse_schedulers():
    """cf.encode=ddim: our deterministic step is diffusers' DDIMScheduler (η = 0, ε̂ from the clipped
    x̂0) and our inversion step its DDIMInverseScheduler (ε̂ of step t at the point one step lower)."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    keep = list(range(0, 1000, 100))
    d = _diffusion(keep)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 6, 7, generator=gen) * 1.5
    output = torch.cat([torch.randn(2, 1, 6, 7, generator=gen), torch.rand(2, 1, 6, 7, generator=gen) * 2 - 1], 1)

    def model(x_, t_):
        return output

    fwd = DDIMScheduler(num_train_timesteps=1000, clip_sample=True, set_alpha_to_one=True)
    fwd.set_timesteps(len(keep))
    inv = DDIMInverseScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=True)
    inv.set_timesteps(len(keep))
    for k in (0, 1, 5, 9):
        t = torch.full((2,), k)
        ours = d.ddim_mean(d.p_mean_variance(model, x, t), x, t)
        theirs = fwd.step(output[:, :1], keep[k], x, eta=0.0, use_clipped_model_output=True).prev_sample
        torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)
        ours = d.ddim_invert_step(model, x, t)
        theirs = inv.step(output[:, :1], keep[k], x).prev_sample
        torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(d.ddim_mean(d.p_mean_variance(model, x, torch.full((2,), 5)), x, torch.full((2,), 5)), x)
