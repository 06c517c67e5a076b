"""Noise schedules and timestep respacing (guided-diffusion semantics).

Both work in float64 NumPy: the schedule's small differences (1 - abar near 1e-4) are what the
posterior variance is made of, and guided-diffusion computes them in float64 too.
"""

from __future__ import annotations

import numpy as np


def linear_betas(num_timesteps: int) -> np.ndarray:
    """DDPM's linear schedule, scaled so that any T spans the same total noise as T = 1000.

    beta_t runs linearly from 1e-4 * 1000 / T to 0.02 * 1000 / T (Ho et al. 2020 at T = 1000;
    Nichol & Dhariwal 2021 rescale it for other T).
    """
    if num_timesteps < 1:
        raise ValueError(f"the number of diffusion steps must be positive, got {num_timesteps}")
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Improved DDPM's cosine schedule: abar(t) = cos^2(((t/T + s) / (1 + s)) pi / 2), s = 0.008."""

    def abar(u: float) -> float:
        return float(np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2)

    t = np.arange(num_timesteps, dtype=np.float64)
    betas = [1 - abar((i + 1) / num_timesteps) / abar(i / num_timesteps) for i in t]
    return np.minimum(np.array(betas, dtype=np.float64), max_beta)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


def named_betas(name: str, num_timesteps: int) -> np.ndarray:
    if name not in SCHEDULES:
        raise ValueError(f"unknown noise schedule '{name}' (choose from {sorted(SCHEDULES)})")
    return SCHEDULES[name](num_timesteps)


def space_timesteps(num_timesteps: int, section_counts: str | int | list[int]) -> set[int]:
    """Which of the original steps 0..T-1 a respaced process keeps.

    ``section_counts`` follows guided-diffusion's ``respace.space_timesteps``:

    * ``"ddimN"``: the evenly strided steps ``range(0, T, stride)``, with the stride that gives
      exactly N steps (diffusers' ``timestep_spacing="leading"``);
    * ``"N"`` or ``N``: N steps spread evenly over 0..T-1, both ends included, rounded
      (diffusers' ``timestep_spacing="linspace"``);
    * ``"a,b,c"``: T is cut into equal sections (the first ``T % k`` one step longer) and each
      section gets its own count, spread evenly over that section.

    Raises ``ValueError`` if a section is asked for more steps than it has.
    """
    if isinstance(section_counts, str):
        text = section_counts.strip()
        if text.startswith("ddim"):
            want = int(text[len("ddim"):])
            for stride in range(1, num_timesteps):
                steps = range(0, num_timesteps, stride)
                if len(steps) == want:
                    return set(steps)
            if want == num_timesteps:
                return set(range(num_timesteps))
            raise ValueError(f"cannot take exactly {want} evenly strided steps from {num_timesteps}")
        try:
            counts = [int(c) for c in text.split(",")]
        except ValueError as err:
            raise ValueError(f"respacing '{section_counts}': expected 'N', 'ddimN' or 'a,b,c'") from err
    elif isinstance(section_counts, int):
        counts = [section_counts]
    else:
        counts = [int(c) for c in section_counts]
    if not counts or min(counts) < 1:
        raise ValueError(f"respacing '{section_counts}': every section needs at least one step")

    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count > size:
            raise ValueError(f"respacing '{section_counts}': cannot take {count} steps from a section of {size}")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))  # accumulated, then rounded, as guided-diffusion does
            position += stride
        start += size
    return set(kept)
