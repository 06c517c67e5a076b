"""Does the DDPM keep the anatomy where the counterfactuals use it? (``diffice ddpm-check``)

A counterfactual pass noises a frame to respaced step τ and denoises it; if the DDPM alone
(no guidance, λc = λp = 0) cannot bring a standard plane back from that noise level with its
anatomy in place, no guide can make a counterfactual of it. :func:`ddpm_check` runs exactly
that unguided pass (:func:`~diffice.counterfactual.engine.reconstruct`, same noising
convention and per-frame seeds as the engine) on standard-plane frames and scores, per
anatomical class, the segmenter's Dice between the input and its reconstruction (pixels
pooled over all frames), plus the PSNR of the reconstruction (:func:`diffice.metrics.psnr.psnr`).

Plain tensors and modules: used by the command, by DDPM validation and by tests alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from diffice.counterfactual.engine import reconstruct
from diffice.counterfactual.seeding import frame_generators
from diffice.nets.dice import DiceCounter, dice_or_none

# which mask classes are scored (the others, e.g. background and fp, are not anatomy to keep)
SCORED = ("head", "bone", "th", "csp")


def pass_options(cf) -> dict:
    """The ``cf`` keys that decide how an unguided pass runs, as :func:`ddpm_check`'s keyword arguments."""
    return {"convention": str(cf.noise_convention), "clip_denoised": bool(cf.clip_denoised), "encode": str(cf.encode)}


@torch.no_grad()
def ddpm_check(
    diffusion,
    model: torch.nn.Module,
    segment: Callable[[torch.Tensor], torch.Tensor] | None,
    batches: Iterable[tuple[torch.Tensor, Sequence[int]]],
    *,
    tau: int,
    classes: Sequence[str],
    seed: int = 0,
    convention: str = "diffice",
    clip_denoised: bool = True,
    keep: int = 0,
    judge: Callable[[torch.Tensor], dict] | None = None,
    encode: str = "noise",
) -> dict:
    """Reconstruct every frame of ``batches`` ((B,1,H,W) in [-1,1], dataset indices) from step τ.

    ``segment(x) -> (B,K,H,W)`` logits (None: PSNR only). Returns ``{"frames", "tau", "psnr",
    "dice": {class: value or None}, "examples": [(input, reconstruction), ...]}`` with up to
    ``keep`` example pairs (CPU tensors (1,H,W)). ``judge(x) -> {"brain": (B,) bool}`` (the
    official SonoNet-16 on real frames) adds ``"sononet"``: how often it calls inputs and their
    reconstructions a brain plane (rates with intervals, and the exact McNemar p of the pairs).
    """
    from diffice.metrics.psnr import psnr  # (diffice.metrics brings torchmetrics: imported when used)
    from diffice.metrics.stats import mcnemar, rate_interval, ratio_interval

    dice = DiceCounter(len(classes))
    psnrs: list[float] = []
    examples: list[tuple[torch.Tensor, torch.Tensor]] = []
    calls: list[tuple[bool, bool]] = []
    seen: list[int] = []
    for x, indices in batches:
        ids = [int(i) for i in indices]
        seen += ids
        gens = frame_generators(seed, ids)
        rec = reconstruct(diffusion, model, x, tau, gens, convention, clip_denoised, encode).float().clamp(-1, 1)
        psnrs += psnr(x, rec)
        if segment is not None:
            dice.update(segment(x).argmax(1), segment(rec).argmax(1))
        if judge is not None:
            calls += list(zip(judge(x)["brain"].tolist(), judge(rec)["brain"].tolist()))
        for a, b in zip(x, rec):
            if len(examples) < keep:
                examples.append((a.detach().cpu(), b.detach().cpu()))
    pooled = dice.compute()  # NaN everywhere without a segmenter
    scored = [(c, name) for c, name in enumerate(classes) if name in SCORED]
    out = {
        "frames": len(psnrs),
        "tau": int(tau),
        "convention": convention,
        "encode": encode,
        "psnr": float(np.mean(psnrs)) if psnrs else math.nan,
        "dice": {name: dice_or_none(pooled[c]) for c, name in scored},
        "dice_intervals": {name: ratio_interval([f[0][c] for f in dice.frames], [f[1][c] for f in dice.frames])
                           for c, name in scored if segment is not None},  # bootstrap over frames
        "examples": examples,
        # per frame (data-set index): what a paired comparison of two DDPMs on the same frames needs
        "per_frame": [{"index": i, "psnr": p, **({"brain_input": c[0], "brain_reconstruction": c[1]} if calls else {})}
                      for i, p, c in zip(seen, psnrs, calls or [None] * len(seen))],
    }
    if judge is not None:
        a, b = [c for c, _ in calls], [r for _, r in calls]
        out["sononet"] = {"input": rate_interval(sum(a), len(a)), "reconstruction": rate_interval(sum(b), len(b)),
                          "difference": (sum(b) - sum(a)) / len(a) if a else None,
                          "mcnemar_p": mcnemar(a, b)["p_value"] if a else None}
    return out
