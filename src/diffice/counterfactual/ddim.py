"""``cf.encode=ddim``: the deterministic encoding and decoding of a counterfactual pass.

Eq. (1) becomes τ steps of DDIM inversion (Song et al. 2021) and eq. (2)'s sampled step DDIM's
deterministic one (η = 0), shifted by the same −Σ·g (g the gradient of eq. 4 at x̂0, Σ the step's
variance), so λc and λp keep their meaning. No noise is drawn: what the guidance leaves alone comes
back about as it was, speckle included, and a λc = 0 pass returns about its input (the encoding of
Diffusion Causal Models, Sanchez & Tsaftaris 2022). The step maths live in
:class:`~diffice.diffusion.GaussianDiffusion` (``ddim_mean``, ``ddim_invert_step``).
"""

from __future__ import annotations

import torch


def ddim_invert(diffusion, model: torch.nn.Module, x: torch.Tensor, tau: int) -> torch.Tensor:
    """x taken deterministically to respaced index τ−1 by τ DDIM inversion steps (τ calls, no gradient)."""
    with torch.no_grad():
        for i in range(tau):
            x = diffusion.ddim_invert_step(model, x, torch.full((x.shape[0],), i, device=x.device, dtype=torch.long))
    return x


def ddim_pass(engine, x_in: torch.Tensor, anchor, lam: torch.Tensor) -> tuple[torch.Tensor, int]:
    """One guided pass of ``engine`` (a :class:`~diffice.counterfactual.engine.CounterfactualEngine`:
    its diffusion, denoiser, settings and x̂0 gradient) from ``x_in``. Returns (x0, 2τ calls)."""
    d, tau = engine.diffusion, engine.s.tau
    x_t = ddim_invert(d, engine.model, x_in, tau)
    for i in reversed(range(tau)):
        t = torch.full((x_in.shape[0],), i, device=x_in.device, dtype=torch.long)
        with torch.no_grad():
            out = d.p_mean_variance(engine.model, x_t, t, clip_denoised=engine.s.clip_denoised)
        g = engine.grad_x0(out["pred_xstart"], anchor, lam)
        x_t = (d.ddim_mean(out, x_t, t) - out["variance"].detach().float() * g).detach()
        if engine.progress is not None:
            engine.progress(f"step {i}")
    return x_t, 2 * tau
