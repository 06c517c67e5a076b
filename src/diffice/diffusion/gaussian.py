"""Gaussian diffusion on a (possibly respaced) subset of the training steps.

The maths of DDPM (Ho et al. 2020) with the learned reverse variance and hybrid loss of Improved
DDPM (Nichol & Dhariwal 2021), on the respaced process of guided-diffusion: keeping steps
S = {s_0 < s_1 < ... < s_{K-1}} of the T training steps gives a K-step process with

    abar_k = abar(s_k)   and   beta_k = 1 - abar_k / abar_{k-1}        (abar_{-1} = 1)

so the forward marginals q(x_{s_k} | x_0) are those of training. Every ``t`` argument below is
a *respaced* index k (LongTensor (B,)); the model is called with the original step
``timestep_map[k] = s_k``. Images are float32 (B, C, H, W) in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from diffice.diffusion.losses import LOG2, discretized_gaussian_log_likelihood, mean_flat, normal_kl
from diffice.diffusion.schedule import named_betas, space_timesteps

CondFn = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]


class GaussianDiffusion:
    """A K-step Gaussian diffusion kept from ``base_betas`` at ``use_timesteps``.

    ``base_betas``: float64 array of the T training betas; ``use_timesteps``: the kept original
    steps (None = all T); ``learn_sigma``: the model outputs (eps, v) and the reverse variance is
    interpolated between beta_k and the posterior variance (Improved DDPM eq. 15); otherwise the
    variance is fixed to beta_k (DDPM's sigma^2 = beta, with the posterior variance at k = 0).
    """

    def __init__(self, base_betas: np.ndarray, use_timesteps: Sequence[int] | set[int] | None = None, *, learn_sigma: bool = True):
        base_betas = np.asarray(base_betas, dtype=np.float64)
        self.original_num_steps = len(base_betas)
        keep = sorted(set(range(len(base_betas))) if use_timesteps is None else {int(s) for s in use_timesteps})
        if not keep or keep[0] < 0 or keep[-1] >= len(base_betas):
            raise ValueError(f"kept timesteps must lie in 0..{len(base_betas) - 1}")
        self.learn_sigma = learn_sigma
        self.timestep_map = torch.tensor(keep, dtype=torch.long)
        self.num_timesteps = len(keep)

        base_abar = np.cumprod(1.0 - base_betas)
        abar = base_abar[keep]
        abar_prev = np.append(1.0, abar[:-1])
        betas = 1.0 - abar / abar_prev  # respaced betas (guided-diffusion respace.py)
        alphas = 1.0 - betas
        # posterior q(x_{k-1} | x_k, x_0) = N(coef1 x_0 + coef2 x_k, beta~_k)       (DDPM eq. 6-7)
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        # beta~_0 = 0: its log is replaced by that of beta~_1, as guided-diffusion does (diffusers
        # clamps it to 1e-20 instead, which makes the last step's variance, and a -Sigma g shift, vanish)
        post_log_var = np.log(np.append(post_var[1], post_var[1:])) if len(post_var) > 1 else np.log(np.maximum(post_var, 1e-20))
        self._np = {
            "betas": betas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": np.sqrt(abar),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1.0),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": post_log_var,
            "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
            "log_betas": np.log(betas),
            # fixed-large variance (learn_sigma=False): beta_k, with beta~_1 at k = 0
            "fixed_log_variance": np.log(np.append(post_var[1] if len(post_var) > 1 else betas[0], betas[1:])),
        }
        self._cache: dict[tuple[str, torch.device], torch.Tensor] = {}

    # ------------------------------------------------------------------ helpers

    def array(self, name: str) -> np.ndarray:
        """A per-step float64 array by name (betas, alphas_cumprod, posterior_variance, ...)."""
        return self._np[name]

    def _extract(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """Values of array ``name`` at respaced steps ``t`` (B,), float32, shaped (B, 1, ..., 1)."""
        key = (name, t.device)
        arr = self._cache.get(key)
        if arr is None:
            arr = torch.from_numpy(self._np[name]).to(device=t.device, dtype=torch.float32)
            self._cache[key] = arr
        return arr[t].reshape(-1, *([1] * (ndim - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Original (training) timesteps of respaced steps ``t``, for calling the model."""
        return self.timestep_map.to(t.device)[t]

    # ------------------------------------------------------------------ forward process

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps  (DDPM eq. 4)."""
        if noise is None:
            noise = torch.randn_like(x_start)
        n = x_start.ndim
        return self._extract("sqrt_alphas_cumprod", t, n) * x_start + self._extract("sqrt_one_minus_alphas_cumprod", t, n) * noise

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """q(x_{t-1} | x_t, x_0): (mean, variance, clipped log variance)  (DDPM eq. 6-7)."""
        n = x_t.ndim
        mean = self._extract("posterior_mean_coef1", t, n) * x_start + self._extract("posterior_mean_coef2", t, n) * x_t
        return mean, self._extract("posterior_variance", t, n), self._extract("posterior_log_variance_clipped", t, n)

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)  (DDPM eq. 15, inverted eq. 4)."""
        n = x_t.ndim
        return self._extract("sqrt_recip_alphas_cumprod", t, n) * x_t - self._extract("sqrt_recipm1_alphas_cumprod", t, n) * eps

    def predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, x_start: torch.Tensor) -> torch.Tensor:
        n = x_t.ndim
        return (self._extract("sqrt_recip_alphas_cumprod", t, n) * x_t - x_start) / self._extract("sqrt_recipm1_alphas_cumprod", t, n)

    # ------------------------------------------------------------------ reverse process

    def split_output(self, output: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Model output (B, 2C, H, W) -> (eps, v); without learned variance, (eps, None)."""
        if self.learn_sigma:
            if output.shape[1] != 2 * channels:
                raise ValueError(f"a learned-variance model must output {2 * channels} channels, got {output.shape[1]}")
            return output[:, :channels], output[:, channels:]
        return output, None

    def log_variance_from_output(self, v: torch.Tensor | None, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """Learned range (Improved DDPM eq. 15): log Sigma = frac log beta_t + (1 - frac) log beta~_t,
        frac = (v + 1) / 2; v = 1 gives beta_t, v = -1 the clipped posterior variance."""
        if v is None:
            return self._extract("fixed_log_variance", t, ndim)
        min_log = self._extract("posterior_log_variance_clipped", t, ndim)
        max_log = self._extract("log_betas", t, ndim)
        frac = (v + 1.0) / 2.0
        return frac * max_log + (1.0 - frac) * min_log

    def p_mean_variance_from_output(
        self, output: torch.Tensor, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = True
    ) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t) from a model output already computed at (x, t)."""
        eps, v = self.split_output(output, x.shape[1])
        log_var = self.log_variance_from_output(v, t, x.ndim)
        log_var = log_var.expand_as(x) if log_var.shape != x.shape else log_var
        pred_xstart = self.predict_xstart_from_eps(x, t, eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "variance": torch.exp(log_var), "log_variance": log_var, "pred_xstart": pred_xstart, "eps": eps}

    def p_mean_variance(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = True) -> dict[str, torch.Tensor]:
        """Mean and variance of p(x_{t-1} | x_t), the one-step estimate x0|t and the model's eps.

        ``x``: (B, C, H, W) at respaced step ``t``. ``pred_xstart`` is clipped to [-1, 1] when
        ``clip_denoised``; the mean is the posterior mean at that estimate (DDPM eq. 7).
        """
        output = model(x, self.model_timesteps(t))
        return self.p_mean_variance_from_output(output, x, t, clip_denoised)

    def p_sample(
        self,
        model: nn.Module,
        x: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        cond_fn: CondFn | None = None,
        clip_denoised: bool = True,
    ) -> dict[str, torch.Tensor]:
        """One reverse step x_t -> x_{t-1}.

        Guidance (Dhariwal & Nichol 2021, Algorithm 1, written for a loss): ``g = cond_fn(x, t,
        out)`` is the gradient of a loss L w.r.t. x_t and the mean is shifted to mean - Sigma g.
        No noise is added where t == 0. Returns ``out`` plus ``sample`` (and ``mean`` is the
        shifted one; ``unguided_mean`` the mean before the shift).
        """
        out = self.p_mean_variance(model, x, t, clip_denoised)
        mean = out["mean"]
        out["unguided_mean"] = mean
        if cond_fn is not None:
            g = cond_fn(x, t, out)
            mean = mean.float() - out["variance"] * g.float()
            out["mean"] = mean
        if noise is None:
            noise = torch.randn_like(x)
        nonzero = (t != 0).float().reshape(-1, *([1] * (x.ndim - 1)))
        out["sample"] = mean + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return out

    def ddim_mean(self, out: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """DDIM's deterministic step x_t -> x_{t-1} (Song et al. 2021, eq. 12 with η = 0) from a
        ``p_mean_variance`` output at (x, t): sqrt(ᾱ_{t-1}) x̂0 + sqrt(1 − ᾱ_{t-1}) ε̂, with ε̂
        recomputed from the (possibly clipped) x̂0 as guided-diffusion's ``ddim_sample`` does."""
        n = x.ndim
        x0 = out["pred_xstart"].float()
        eps = self.predict_eps_from_xstart(x.float(), t, x0)
        a_prev = self._extract("alphas_cumprod_prev", t, n)
        return a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * eps

    def ddim_invert_step(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """DDIM inversion, one step up: ``x`` at level t−1 (the clean frame when t == 0) -> level t,
        with ε̂ of the model at step t evaluated at ``x`` (the usual approximation ε̂(x_t) ≈ ε̂(x_{t-1})).
        Inverting τ steps and then taking τ :meth:`ddim_mean` steps gives back about the frame
        itself: the deterministic encoding of Diffusion Causal Models (Sanchez & Tsaftaris 2022)."""
        n = x.ndim
        eps, _ = self.split_output(model(x, self.model_timesteps(t)), x.shape[1])
        eps = eps.float()
        a_prev = self._extract("alphas_cumprod_prev", t, n)
        a = self._extract("alphas_cumprod", t, n)
        x0 = (x.float() - (1.0 - a_prev).sqrt() * eps) / a_prev.sqrt()
        return a.sqrt() * x0 + (1.0 - a).sqrt() * eps

    def p_sample_loop(
        self,
        model: nn.Module,
        shape: Sequence[int],
        *,
        x_T: torch.Tensor | None = None,
        start_step: int | None = None,
        generators: Sequence[torch.Generator] | None = None,
        cond_fn: CondFn | None = None,
        clip_denoised: bool = True,
        device: torch.device | str = "cpu",
        progress: bool = False,
        callback: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Run the reverse process from step ``start_step`` (default K - 1) down to 0.

        ``x_T``: the starting x at ``start_step`` (default: standard normal noise). With
        ``generators`` (one per sample) the start and each step's noise are drawn per sample,
        so a frame does not depend on the batch it is in. ``progress`` shows a rich progress
        bar; ``callback(k)`` is called after each step k. Returns x_0 in about [-1, 1].
        """
        shape = tuple(shape)
        start = self.num_timesteps - 1 if start_step is None else int(start_step)
        x = x_T.to(device) if x_T is not None else randn(shape, generators, device)
        steps = range(start, -1, -1)
        from diffice.progress import Bar

        bar = Bar("sampling", len(steps), enabled=progress)
        for k in steps:
            t = torch.full((shape[0],), k, dtype=torch.long, device=device)
            noise = randn(shape, generators, device) if k > 0 else torch.zeros(shape, device=device)
            with torch.no_grad() if cond_fn is None else torch.enable_grad():
                x = self.p_sample(model, x, t, noise=noise, cond_fn=cond_fn, clip_denoised=clip_denoised)["sample"].detach()
            bar.advance()
            if callback is not None:
                callback(k)
        bar.close()
        return x

    # ------------------------------------------------------------------ training objective

    def vb_terms_bpd(self, output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One term of the variational bound per sample, in bits per dimension (B,).

        L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0, and the decoder
        L_0 = -log p(x_0 | x_1) (a discretised Gaussian) at t = 0 (DDPM eq. 5).
        """
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance_from_output(output, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / LOG2
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        nll = mean_flat(nll) / LOG2
        return torch.where(t == 0, nll, kl)

    def training_losses(
        self, model: nn.Module, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None, vb_weight: float = 0.001
    ) -> dict[str, torch.Tensor]:
        """The hybrid loss of Improved DDPM, per sample: ``dict(loss, mse, vb)`` each (B,).

        mse = ||eps - eps_theta(x_t, t)||^2 (mean over pixels, DDPM's L_simple);
        vb = L_t in bits/dim with the mean held fixed (eps detached), so that it trains the
        variance only; loss = mse + vb_weight * K * vb, where K * L_t is the sampled estimate of
        the whole bound (Improved DDPM eq. 16, lambda = 0.001). At K = 1000 this is
        guided-diffusion's mse + vb.
        """
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        output = model(x_t, self.model_timesteps(t))
        channels = x_start.shape[1]
        eps, v = self.split_output(output, channels)
        mse = mean_flat((noise - eps.float()) ** 2)
        if v is None:
            return {"loss": mse, "mse": mse, "vb": torch.zeros_like(mse)}
        frozen = torch.cat([eps.detach(), v], dim=1).float()
        vb = self.vb_terms_bpd(frozen, x_start.float(), x_t.float(), t)
        return {"loss": mse + vb_weight * self.num_timesteps * vb, "mse": mse, "vb": vb}


# ---------------------------------------------------------------------- construction and noise


def build_diffusion(cfg, respacing: str | None = None) -> GaussianDiffusion:
    """The diffusion of ``cfg.diffusion`` on all T steps (``respacing=None``, for training) or on
    the steps a guided-diffusion section string keeps (e.g. ``cfg.diffusion.timestep_respacing``)."""
    from diffice.errors import UserError

    d = cfg.diffusion
    try:
        betas = named_betas(str(d.noise_schedule), int(d.steps))
        keep = None if respacing in (None, "") else space_timesteps(int(d.steps), str(respacing))
    except ValueError as err:
        raise UserError(f"diffusion (steps={d.steps}, noise_schedule={d.noise_schedule}, respacing={respacing!r}): {err}") from err
    return GaussianDiffusion(betas, keep, learn_sigma=bool(d.learn_sigma))


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` under global ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def generators_for(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample, seeded from (seed, dataset index)."""
    return [torch.Generator().manual_seed(sample_seed(seed, int(i))) for i in indices]


def randn(shape: Sequence[int], generators: Sequence[torch.Generator] | None, device) -> torch.Tensor:
    """Standard normal noise of ``shape``; row b from ``generators[b]`` when given (drawn on CPU)."""
    if generators is None:
        return torch.randn(tuple(shape), device=device)
    if len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in generators]).to(device)
