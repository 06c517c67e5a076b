"""diffice.diffusion: noise schedule, respacing, learned variance, hybrid loss and the guided sampler.

Plain tensors and ``nn.Module`` models only (no Lightning). See ``docs/diffusion.md``.
"""

from diffice.diffusion.gaussian import (
    CondFn,
    GaussianDiffusion,
    build_diffusion,
    generators_for,
    randn,
    sample_seed,
)
from diffice.diffusion.losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from diffice.diffusion.schedule import linear_betas, named_betas, space_timesteps

__all__ = [
    "CondFn",
    "GaussianDiffusion",
    "build_diffusion",
    "discretized_gaussian_log_likelihood",
    "generators_for",
    "linear_betas",
    "mean_flat",
    "named_betas",
    "normal_kl",
    "randn",
    "sample_seed",
    "space_timesteps",
]
