"""Sampling the layout-conditioned DDPM: one stage, two-stage adaptive, and RePaint edits.

All three run on the diffusion core (:class:`~diffice.diffusion.GaussianDiffusion`) with the
EMA denoiser wrapped as ``model(x, t)`` by :class:`~diffice.nets.conditional.Conditioned`
(classifier-free guidance weight ``w``). Sample i's noise comes from its own generator
(``generators_for(seed, ids)``), and the synthesis run calls every network at one batch size
(``synthesis.net_batch``, :mod:`diffice.nets.fixed_batch`; stage 2 computes only the samples
still refining), so a sample does not depend on the batch it is drawn in.

**Two-stage adaptive sampling** (coarse to fine, diffice's reading of FetalFlex's): stage 1
samples from pure noise at a strong condition (``synthesis.stage1_guidance``) and lays down
the structure. A segmenter (``synthesis.segmenter_ckpt``, by default the oracle's own
segmentation; not the judge that scores the result) then measures how well the requested layout is recovered from the sample (Dice over
the requested structures). Stage 2 re-noises the sample to a step chosen per sample from that
Dice, ``k = K * (lo + (hi - lo) * (1 - Dice))`` with ``[lo, hi] = synthesis.stage2_range``
(a faithful sample is only polished; a poor one goes back far enough for its structure to
be redrawn), and denoises it at ``synthesis.stage2_guidance``. Up to ``synthesis.rounds``
rounds run while the Dice stays below ``synthesis.dice_target``; each sample keeps the round
whose Dice is highest (stage 1 included).

**Low-frequency anchor** (``synthesis.anchor: prealign``; ILVR, Choi et al. 2021): after each
step whose next noise level is at least ``synthesis.anchor_until`` of the chain, the sample's
low frequencies (an average pool by ``synthesis.anchor_factor``, upsampled) are replaced by those
of the pre-alignment encoder's frame for the layout, noised to that level. The sample keeps its
own detail; its mean brightness, dark background and black sector corners come from a network
that learned them by regression. Without it the demo model's samples drift to a mid-grey mean
(docs/synthesis.md, image quality).

**RePaint** (Lugmayr et al. 2022) for edits: the pixels outside the edited anatomy (the
*known* region) are replaced at every step by the source frame noised to that step, and the
final frame takes them from the source exactly; resampling jumps (``jump_length``,
``jump_n_sample``) go back up the chain by ``q(x_{k+j} | x_k)`` so that the generated region
harmonises with the pasted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from diffice.diffusion import GaussianDiffusion, generators_for
from diffice.nets.conditional import Conditioned, one_hot_layout
from diffice.nets.dice import dice

Segment = Callable[[torch.Tensor], torch.Tensor]  # (B,1,H,W) in [-1,1] -> class indices (B,H,W)


def make_condition(layouts: torch.Tensor, planes: Sequence[int], gas: Sequence[float], num_classes: int, device) -> dict:
    """The condition of a batch: ``layouts`` int (B, H, W) (-1 unspecified), planes, GA weeks."""
    return {
        "layout": one_hot_layout(layouts.to(device), num_classes),
        "plane": torch.tensor([int(p) for p in planes], dtype=torch.long, device=device),
        "ga": torch.tensor([float(g) for g in gas], dtype=torch.float32, device=device),
    }


def _noise(gens: Sequence[torch.Generator], shape, device) -> torch.Tensor:
    """Per-sample noise (shape[0] == len(gens)): row b from ``gens[b]``, drawn on the CPU."""
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in gens]).to(device)


def layout_dice(pred: torch.Tensor, layout: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-sample per-class hard Dice (B, C) float32 over specified pixels (layout >= 0); NaN where the
    class is in neither the request nor the prediction (:func:`diffice.nets.dice.dice`)."""
    return dice(pred, layout, num_classes, valid=layout >= 0).float()


def requested_dice(pred: torch.Tensor, layout: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean Dice (B,) over the structures (classes >= 1) the layout requests."""
    d = layout_dice(pred, layout, num_classes)[:, 1:]
    asked = torch.stack([(layout == c).any(dim=(1, 2)).cpu() for c in range(1, num_classes)], dim=1)
    d = torch.where(asked, d.nan_to_num(0.0), torch.zeros_like(d))
    return d.sum(1) / asked.sum(1).clamp(min=1)


def lowpass(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``x`` (B, C, H, W) averaged over ``factor`` x ``factor`` blocks (the last ones may be smaller)
    and upsampled back bilinearly: what ILVR's phi_N keeps."""
    h, w = x.shape[-2:]
    small = F.adaptive_avg_pool2d(x, (max(1, math.ceil(h / factor)), max(1, math.ceil(w / factor))))
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


@dataclass
class Anchor:
    """ILVR's low-frequency anchor (module docstring): ``ref`` (B, 1, H, W) in [-1, 1]."""

    diffusion: GaussianDiffusion
    ref: torch.Tensor
    factor: int
    until: float

    def active(self, k_next: int) -> bool:
        """Whether the step into respaced level ``k_next`` is anchored (never the last, to x_0)."""
        return k_next >= 1 and k_next >= self.until * self.diffusion.num_timesteps

    def __call__(self, x: torch.Tensor, k_next: int, gens: Sequence[torch.Generator], sel: torch.Tensor | None = None) -> torch.Tensor:
        ref = self.ref if sel is None else self.ref[sel]
        t = torch.full((x.shape[0],), int(k_next), dtype=torch.long, device=x.device)
        y = self.diffusion.q_sample(ref.to(x.device), t, _noise(gens, x.shape, x.device))
        return x - lowpass(x, self.factor) + lowpass(y, self.factor)


def sample(diffusion: GaussianDiffusion, net, cond: dict, gens: Sequence[torch.Generator], *, w: float,
           x_start: torch.Tensor | None = None, start: int | None = None, progress: bool = False,
           anchor: Anchor | None = None) -> torch.Tensor:
    """Frames (B, 1, H, W) from pure noise (or from ``x_start`` at respaced step ``start``),
    low frequencies held to ``anchor`` while it is active."""
    b, _, h, w_ = cond["layout"].shape
    shape = (b, 1, h, w_)
    device = cond["layout"].device
    model = Conditioned(net, cond, w)
    start = diffusion.num_timesteps - 1 if start is None else int(start)
    x = x_start if x_start is not None else _noise(gens, shape, device)
    for k in range(start, -1, -1):
        t = torch.full((b,), k, dtype=torch.long, device=device)
        noise = _noise(gens, shape, device) if k > 0 else torch.zeros(shape, device=device)
        with torch.no_grad():
            x = diffusion.p_sample(model, x, t, noise=noise)["sample"]
        if anchor is not None and anchor.active(k - 1):
            x = anchor(x, k - 1, gens)
    return x.float().clamp(-1, 1)


@dataclass
class TwoStageResult:
    frames: torch.Tensor                    # (B, 1, H, W) the kept samples
    stage1: torch.Tensor                    # (B, 1, H, W) stage 1's samples
    dice_stage1: torch.Tensor               # (B,) steering segmenter's Dice of stage 1
    dice_final: torch.Tensor                # (B,) of the kept sample
    restart_steps: list[list[int]] = field(default_factory=list)  # per sample: stage-2 start step of each round run
    kept_round: list[int] = field(default_factory=list)          # 0 = stage 1, r = round r


def two_stage(diffusion: GaussianDiffusion, net, cond: dict, layouts: torch.Tensor, seed_ids: Sequence[int], seed: int,
              segment: Segment, num_classes: int, *, w1: float, w2: float, stage2_range: Sequence[float],
              dice_target: float, rounds: int, anchor: Anchor | None = None) -> TwoStageResult:
    """Two-stage adaptive sampling (module docstring). ``layouts``: the requested int layouts;
    ``anchor`` holds the low frequencies of both stages while it is active."""
    K = diffusion.num_timesteps
    device = cond["layout"].device
    b = layouts.shape[0]
    first = sample(diffusion, net, cond, generators_for(seed, seed_ids), w=w1, anchor=anchor)
    best = first.clone()
    with torch.no_grad():
        best_d = requested_dice(segment(first), layouts, num_classes)
    d1 = best_d.clone()
    lo, hi = float(stage2_range[0]), float(stage2_range[1])
    restarts: list[list[int]] = [[] for _ in range(b)]
    kept = [0] * b
    for r in range(1, int(rounds) + 1):
        todo = best_d < float(dice_target)
        if not bool(todo.any()):
            break
        ks = [max(1, min(K - 1, round(K * (lo + (hi - lo) * (1.0 - float(best_d[i])))))) for i in range(b)]
        # round r's noise: its own generators per sample (independent of the batch and of stage 1)
        gens = generators_for(seed + 7919 * r, seed_ids)
        x = torch.empty_like(best)
        for i in range(b):
            t_i = torch.tensor([ks[i]], device=device)
            x[i : i + 1] = diffusion.q_sample(best[i : i + 1], t_i, torch.randn(best.shape[1:], generator=gens[i])[None].to(device))
        start = max(ks[i] for i in range(b) if todo[i])
        for k in range(start, -1, -1):
            # only the samples still refining at step k are computed (their own generators draw)
            act = [i for i in range(b) if bool(todo[i]) and k <= ks[i]]
            if not act:
                continue
            sel = torch.tensor(act, device=device)
            sub = Conditioned(net, {key: v[sel] for key, v in cond.items()}, w2)
            t = torch.full((len(act),), k, dtype=torch.long, device=device)
            noise = _noise([gens[i] for i in act], (len(act), *x.shape[1:]), device) if k > 0 else torch.zeros_like(x[sel])
            with torch.no_grad():
                x[sel] = diffusion.p_sample(sub, x[sel], t, noise=noise)["sample"]
            if anchor is not None and anchor.active(k - 1):
                x[sel] = anchor(x[sel], k - 1, [gens[i] for i in act], sel)
        x = x.float().clamp(-1, 1)
        with torch.no_grad():
            d = requested_dice(segment(x), layouts, num_classes)
        for i in range(b):
            if todo[i]:
                restarts[i].append(ks[i])
                if d[i] > best_d[i]:
                    best[i], best_d[i], kept[i] = x[i], d[i], r
    return TwoStageResult(best, first, d1, best_d, restarts, kept)


def jump_schedule(steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """RePaint's time sequence on ``steps`` respaced steps: down from steps - 1 to -1 (the clean
    frame); every ``jump_length`` steps the chain goes back up ``jump_length`` steps, so each
    stretch is passed ``jump_n_sample`` times."""
    jumps = {j: jump_n_sample - 1 for j in range(0, max(0, steps - jump_length), max(1, jump_length))}
    t, seq = steps, []
    while t >= 1:
        t -= 1
        seq.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                seq.append(t)
    seq.append(-1)
    return seq


def edit(diffusion: GaussianDiffusion, net, cond: dict, source: torch.Tensor, known: torch.Tensor,
         gens: Sequence[torch.Generator], *, w: float, repaint: bool, jump_length: int, jump_n_sample: int,
         start_fraction: float = 1.0) -> torch.Tensor:
    """Edit ``source`` (B, 1, H, W) to the layouts of ``cond``.

    ``repaint``: RePaint with the ``known`` (B, 1, H, W) bool region held to the source;
    otherwise the whole frame is regenerated from the source noised to ``start_fraction`` of
    the chain (SDEdit; at 1.0 the source is forgotten), which is the ablation's control."""
    K = diffusion.num_timesteps
    device = source.device
    b = source.shape[0]
    model = Conditioned(net, cond, w)
    start = max(0, min(K - 1, round(K * float(start_fraction)) - 1))
    x = diffusion.q_sample(source, torch.full((b,), start, device=device), _noise(gens, source.shape, device))
    if not repaint:
        return sample(diffusion, net, cond, gens, w=w, x_start=x, start=start)
    known = known.to(device).float()
    seq = jump_schedule(start + 1, int(jump_length), max(1, int(jump_n_sample)))
    for cur, nxt in zip(seq[:-1], seq[1:], strict=True):
        if nxt < cur:  # denoise x_cur -> x_nxt, then the known region from the source at nxt
            t = torch.full((b,), cur, dtype=torch.long, device=device)
            noise = _noise(gens, source.shape, device) if cur > 0 else torch.zeros_like(source)
            with torch.no_grad():
                x = diffusion.p_sample(model, x, t, noise=noise)["sample"]
            if nxt >= 0:
                ref = diffusion.q_sample(source, torch.full((b,), nxt, device=device), _noise(gens, source.shape, device))
            else:
                ref = source
            x = known * ref + (1.0 - known) * x
        else:  # jump back up: x_nxt ~ q(x_nxt | x_cur) = N(sqrt(1 - beta) x_cur, beta)
            beta = float(diffusion.array("betas")[nxt])
            x = math.sqrt(1.0 - beta) * x + math.sqrt(beta) * _noise(gens, source.shape, device)
    return x.float().clamp(-1, 1)


def known_region(before: np.ndarray, after: np.ndarray, dilation: int, region: np.ndarray | None = None) -> np.ndarray:
    """Bool (H, W): pixels held to the source in a RePaint edit (outside the dilated change, or
    outside the dilated ``region`` when given: a sham edit regenerates it with the layout unchanged)."""
    from diffice.synthesis.layouts import grown

    return ~grown(before != after if region is None else region.astype(bool), dilation)
