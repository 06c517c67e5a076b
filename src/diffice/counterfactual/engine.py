"""The guided reverse process of Diff-ICE and its baselines, on plain tensors and modules.

All images here are float32 (B, 1, H, W) in [-1, 1]. Equations refer to Pegios et al.,
"Diffusion-based Iterative Counterfactual Explanations for Fetal Ultrasound Image Quality
Assessment" (``../shared/papers/diff-ice.txt``), section 3.

One *pass* (one Diff-ICE iteration) noises its input to respaced step τ with eq. (1) and runs
the reverse process back to a clean image, each step sampling

    x_{t-1} ~ N(μ_θ(x_t, t) − Σ_θ(x_t, t)·g, Σ_θ(x_t, t))                           (eq. 2)

with Σ_θ the learned variance and g the gradient of the guiding loss

    L = λc · BCE(f(x̂0|t), y = SP) + λp · perceptual_l2(x̂0|t, x)                      (eq. 4)

per frame (the batch loss is the SUM of per-frame losses, so λ does not depend on batch size).
Where the gradient is taken is the method:

- ``diff-ice`` / ``diff-ice1``: w.r.t. the one-step estimate x̂0|t (eq. 3) of this step's
  denoiser call, with no backpropagation through the denoiser (FastDiME without its mask).
  ``diff-ice`` chains ``iterations`` passes, each starting from the previous output, the
  perceptual term always anchored to the ORIGINAL input.
- ``diff-ice1-xt``: w.r.t. the noisy x_t, backpropagating through the denoiser.
- ``dime``: at every step a full unguided reverse chain from x_t to a clean image, gradient
  w.r.t. that clean image divided by sqrt(ᾱ_t) (DiME's scaling).

Where a pass starts (``noise_convention``): by default (``diffice``) the input is noised to
respaced index τ−1 and denoised over indices τ−1, …, 0 — τ denoiser calls, and the first call
is told the noise level the frame actually has. DiME's and FastDiME's code (``dime``) noises
to index τ and starts denoising at τ−1, so the first call sees a frame one step noisier
than its t says; it is offered for comparisons with their numbers. x̂0|t is clipped to
[−1, 1] when ``clip_denoised``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from diffice.counterfactual.ddim import ddim_invert, ddim_pass
from diffice.counterfactual.seeding import frame_generators, randn_frames
from diffice.counterfactual.settings import X0_METHODS, CFSettings
from diffice.counterfactual.sparse import change_mask, inpaint
from diffice.metrics.target import low_pass
from diffice.nets.autocast import float32_call, no_autocast, with_precision
from diffice.nets.fixed_batch import FixedBatch, fixed
from diffice.nets.guide import decision_threshold

Features = list[torch.Tensor]


def default_perceptual_l2(a: Features, b: Features) -> torch.Tensor:
    """Per-frame l2 perceptual distance: sum over layers of the mean squared feature difference."""
    return sum(((fa - fb) ** 2).flatten(1).mean(1) for fa, fb in zip(a, b, strict=True))


class GuidanceLoss:
    """Eq. (4) per frame: λc·BCE(f(x̂0), SP) + λp·perceptual_l2(x̂0, x). Returns (B,).

    ``guide(x) -> (B,)`` SP logit, ``perceptual(x) -> list of feature maps``; images in [-1, 1].
    """

    def __init__(
        self,
        guide: Callable[[torch.Tensor], torch.Tensor],
        perceptual: Callable[[torch.Tensor], Features],
        lambda_p: float,
        perceptual_l2: Callable[[Features, Features], torch.Tensor] | None = None,
    ):
        self.guide = guide
        self.perceptual = perceptual
        self.lambda_p = float(lambda_p)
        self.perceptual_l2 = perceptual_l2 or default_perceptual_l2

    @torch.no_grad()
    def anchor(self, x: torch.Tensor) -> Features:
        """Features of the original input, the fixed anchor of the perceptual term."""
        return [f.detach() for f in self.perceptual(x)]

    def __call__(self, x0: torch.Tensor, anchor: Features, lambda_c: torch.Tensor) -> torch.Tensor:
        logit = self.guide(x0).float().reshape(-1)
        # classification term towards y = SP (label 1): BCE with logits = softplus(-logit)
        l_c = F.softplus(-logit)
        l_p = self.perceptual_l2([f.float() for f in self.perceptual(x0)], anchor).float().reshape(-1)
        return lambda_c.to(l_c) * l_c + self.lambda_p * l_p


def coarse(g: torch.Tensor, sigma: float) -> torch.Tensor:
    """``cf.grad_sigma``: the (B,C,H,W) gradient low-passed at σ pixels and rescaled to its own norm,
    frame by frame: the same step length spent on changes coarser than σ (a brightness field, a band,
    a wedge) instead of on texture. Each frame alone, so no bit depends on the batch size. σ = 0
    returns ``g`` itself."""
    if sigma <= 0:
        return g
    out = []
    for f in g:
        c = low_pass(f[None], sigma)
        out.append(c * (f.norm() / c.norm().clamp_min(1e-30)))
    return torch.cat(out)


def _clock(like: torch.Tensor) -> float:
    """Wall time in seconds after the device has finished its queued work."""
    if like.is_cuda:
        torch.cuda.synchronize(like.device)
    return time.perf_counter()


def noise_to(diffusion, x: torch.Tensor, tau: int, convention: str, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Eq. (1): x noised to respaced index τ−1 (``diffice``) or τ (``dime``), one generator per frame."""
    index = tau - 1 if convention == "diffice" else tau
    t = torch.full((x.shape[0],), index, device=x.device, dtype=torch.long)
    return diffusion.q_sample(x, t, randn_frames(gens, tuple(x.shape[1:]), x))


@torch.no_grad()
def reconstruct(diffusion, model: torch.nn.Module, x: torch.Tensor, tau: int, gens: Sequence[torch.Generator],
                convention: str = "diffice", clip_denoised: bool = True, encode: str = "noise") -> torch.Tensor:
    """The unguided pass (λc = λp = 0) as a counterfactual pass runs it (``noise``: the same per-frame
    noise stream; ``ddim``: :mod:`~diffice.counterfactual.ddim`). What the DDPM alone does to a frame."""
    ddim = encode == "ddim"
    x_t = ddim_invert(diffusion, model, x, tau) if ddim else noise_to(diffusion, x, tau, convention, gens)
    for i in reversed(range(tau)):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        out = diffusion.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised)
        x_t = diffusion.ddim_mean(out, x_t, t) if ddim else guided_sample(
            out, torch.zeros_like(x_t), t, randn_frames(gens, tuple(x.shape[1:]), x_t))
    return x_t


def guided_sample(out: dict, g: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Eq. (2): a sample of N(μ − Σ·g, Σ); no noise at t == 0. ``out`` from p_mean_variance."""
    mean = out["mean"].detach() - out["variance"].detach() * g
    nonzero = (t != 0).to(mean.dtype).view(-1, *([1] * (mean.dim() - 1)))
    return mean + nonzero * torch.exp(0.5 * out["log_variance"].detach()) * noise


@dataclass
class FrameResult:
    """One frame's counterfactual. Images are CPU float32 (1, H, W) in [-1, 1]."""

    index: int
    cf: torch.Tensor
    iterates: list[torch.Tensor]
    p_iters: list[float]
    lambda_c: float
    nfe: int
    attempts: int
    p_lambdas: list[float] = field(default_factory=list)  # final SP probability per λc tried
    seconds_iters: list[float] = field(default_factory=list)  # the frame's share of each pass's time
    dense: torch.Tensor | None = None  # cf.sparse: the dense counterfactual the refinement started from
    p_sparse: float | None = None      # cf.sparse: the guide's SP probability of the refined ``cf``
    mask_fraction: float | None = None  # cf.sparse: share of the frame the refinement may change
    sparse_opening: int | None = None   # cf.sparse: the opening (px) of the layout change whose mask was kept
    threshold: float = 0.5             # the guide's decision threshold: SP when p > threshold

    @property
    def iterations(self) -> int:
        return len(self.iterates)

    @property
    def p_cf(self) -> float:
        return self.p_iters[-1] if self.p_sparse is None else self.p_sparse

    @property
    def flipped(self) -> bool:
        return self.p_cf > self.threshold


class CounterfactualEngine:
    """Runs one method on a batch: λc search, Diff-ICE iterations, adaptive stopping, nfe.

    ``diffusion`` follows the DIFFUSION contract (respaced ``GaussianDiffusion``), ``model`` is
    the denoiser ``model(x, t_original) -> (B, 2, H, W)``. All networks should be in eval mode
    with frozen parameters (the engine only ever differentiates w.r.t. images).

    With ``settings.net_batch`` every call of the denoiser, the guide and the perceptual network
    (forward and backward) runs on exactly that many frames (:mod:`diffice.nets.fixed_batch`):
    the λc search's retries and adaptive stopping shrink the set of frames, but not the calls'
    shape, so a frame's result does not depend on its batch, the batch size or the device count.

    Precision: the guide's side (guide, perceptual network, segmenter, evidence map, the loss and its
    gradient; for ``diff-ice1-xt`` the denoiser too) runs with autocast switched off, so under a
    caller's autocast (Lightning's ``trainer.precision``) only the denoiser's forwards without
    gradient take the reduced precision; ``settings.autocast=bf16`` runs every network in bf16.
    """

    def __init__(
        self,
        diffusion,
        model: torch.nn.Module,
        guide: Callable[[torch.Tensor], torch.Tensor],
        perceptual: Callable[[torch.Tensor], Features],
        settings: CFSettings,
        perceptual_l2: Callable[[Features, Features], torch.Tensor] | None = None,
        progress: Callable[[str], None] | None = None,
        segment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        evidence: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        settings.validate(getattr(diffusion, "num_timesteps", None))
        self.threshold = decision_threshold(guide)  # before any wrapper hides the guide's buffer
        width = settings.net_batch

        def guide_side(fn):
            """A network of the guide's side (guide, perceptual network, segmenter, evidence): float32 (or
            cf.autocast's bf16) whatever autocast the caller runs under (Lightning's trainer.precision), at
            cf.net_batch items a call. Only the denoiser's forwards without gradient run at the trainer's precision."""
            return None if fn is None else fixed(float32_call(with_precision(fn, settings.autocast)), width)

        model = with_precision(model, settings.autocast)
        if width is not None:
            model = FixedBatch(model, width)
        guide = guide_side(guide)
        self.diffusion = diffusion
        self.model = model
        self.guide = guide
        self.s = settings
        self.loss = GuidanceLoss(guide, guide_side(perceptual), settings.lambda_p, perceptual_l2)
        self.progress = progress
        self.segment = guide_side(segment)  # the guide's segmenter (class probabilities), for cf.sparse=layout
        self.evidence = guide_side(evidence)  # the guide's evidence map, for cf.sparse=guide / raised

    # ------------------------------------------------------------------ public

    @torch.no_grad()
    def prob_sp(self, x: torch.Tensor) -> torch.Tensor:
        """The guide's SP probability σ(f(x)), (B,) float32."""
        return torch.sigmoid(self.guide(x).float().reshape(-1))

    def explain(self, x: torch.Tensor, indices: Sequence[int]) -> list[FrameResult]:
        """Counterfactuals of a batch ``x`` (B,1,H,W) in [-1,1]; ``indices`` = dataset indices.

        λc search: every frame runs with ``lambda_c[0]``; frames whose counterfactual the guide
        does not call SP (p ≤ its decision threshold, :func:`~diffice.nets.guide.decision_threshold`)
        run again with the next λc, and so on. With
        ``lambda_search=restart`` (the paper's search) a retry starts again from the original
        input and runs all passes, and a frame keeps the result of the first λc that flips it,
        else the last one tried. With ``continue`` a retry does not redo the passes it already
        ran: it starts from the previous λc's counterfactual and runs ``retry_iterations`` more
        passes (the perceptual term still anchored to the original input); the frame's iterates
        are those of all its attempts in order. ``nfe`` counts every denoiser evaluation the
        frame took part in, over all attempts.
        """
        x = x.detach()
        indices = [int(i) for i in indices]
        n = x.shape[0]
        anchor = self.loss.anchor(x)
        results: list[FrameResult | None] = [None] * n
        nfe = [0] * n
        p_lambdas: list[list[float]] = [[] for _ in range(n)]
        todo = list(range(n))
        for attempt, lam in enumerate(self.s.lambda_c):
            sel = torch.tensor(todo, device=x.device)
            gens = frame_generators(self.s.seed, [indices[i] for i in todo], attempt)
            resume = attempt > 0 and self.s.lambda_search == "continue"
            start = torch.stack([results[i].cf for i in todo]).to(x) if resume else x[sel]
            passes = self.s.retry_iterations if resume else self.s.passes
            iterates, probs, used, secs = self._run(start, [f[sel] for f in anchor], float(lam), gens, passes)
            for j, i in enumerate(todo):
                nfe[i] += used[j]
                p_lambdas[i].append(probs[j][-1])
                before = results[i] if resume else None
                results[i] = FrameResult(
                    index=indices[i], cf=iterates[j][-1], iterates=(before.iterates if before else []) + iterates[j],
                    p_iters=(before.p_iters if before else []) + probs[j], lambda_c=float(lam), nfe=nfe[i],
                    attempts=attempt + 1, p_lambdas=list(p_lambdas[i]),
                    seconds_iters=(before.seconds_iters if before else []) + secs[j], threshold=self.threshold,
                )
            todo = [i for i in todo if not results[i].flipped]
            if not todo:
                break
        if self.s.sparse.on:
            self._refine(x, anchor, results, indices, nfe)  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    def _refine(self, x: torch.Tensor, anchor: Features, results: list[FrameResult], indices: list[int],
                nfe: list[int]) -> None:
        """The sparse refinement (:mod:`diffice.counterfactual.sparse`) of every frame's result, with
        its own λc; ``cf`` becomes the refined frame, ``dense`` keeps the one it started from. With
        several ``opening`` values, a frame the guide does not call SP after one is refined again
        from its dense result with the next (each attempt its own random stream)."""
        s = self.s.sparse
        dense_all = torch.stack([r.cf for r in results]).to(x)
        lam_all = torch.tensor([r.lambda_c for r in results], device=x.device, dtype=torch.float32)
        todo = list(range(len(results)))
        for k, opening in enumerate(s.opening if s.uses_layout else s.opening[:1]):  # only a layout mask is opened
            sel = torch.tensor(todo, device=x.device)
            dense = dense_all[sel]
            mask = change_mask(x[sel], dense, s, self.segment, opening, self.evidence)
            gens = frame_generators(self.s.seed, [indices[i] for i in todo], len(self.s.lambda_c) + k)  # streams of their own
            refined = inpaint(self, x[sel], dense, mask, [f[sel] for f in anchor], lam_all[sel], gens, s)
            p = self.prob_sp(refined).tolist()
            for j, b in enumerate(todo):
                r = results[b]
                nfe[b] += s.tau
                r.dense = r.cf if r.dense is None else r.dense
                r.cf, r.p_sparse, r.sparse_opening = refined[j].detach().float().cpu(), float(p[j]), int(opening)
                r.mask_fraction, r.nfe = float(mask[j].mean()), nfe[b]
            todo = [b for b in todo if not results[b].flipped]
            if not todo:
                break

    # ------------------------------------------------------------------ passes

    def _run(self, x: torch.Tensor, anchor: Features, lam: float, gens: list[torch.Generator], passes: int):
        """``passes`` passes of one λc attempt from ``x``; adaptive stopping shrinks the batch between passes."""
        n = x.shape[0]
        lam_t = torch.full((n,), lam, device=x.device, dtype=torch.float32)
        current = x.clone()
        active = list(range(n))
        iterates: list[list[torch.Tensor]] = [[] for _ in range(n)]
        probs: list[list[float]] = [[] for _ in range(n)]
        nfe = [0] * n
        seconds: list[list[float]] = [[] for _ in range(n)]
        for _ in range(passes):
            sel = torch.tensor(active, device=x.device)
            start = _clock(x)
            out, used = self._pass(current[sel], [f[sel] for f in anchor], lam_t[sel], [gens[i] for i in active])
            p = self.prob_sp(out).tolist()
            share = (_clock(x) - start) / len(active)
            for j, i in enumerate(active):
                iterates[i].append(out[j].detach().float().cpu())
                probs[i].append(float(p[j]))
                nfe[i] += used
                seconds[i].append(share)
            current[sel] = out.detach()
            if self.s.adaptive:
                # stop a frame once the guide is confidently SP (not in the paper; ours)
                active = [i for j, i in enumerate(active) if p[j] < self.s.stop_threshold or p[j] <= self.threshold]
            if not active:
                break
        return iterates, probs, nfe, seconds

    def _pass(self, x_in: torch.Tensor, anchor: Features, lam: torch.Tensor, gens: list[torch.Generator]):
        """One guided reverse process from x_in (eq. 1 then eq. 2 for τ steps). Returns (x0, nfe)."""
        d = self.diffusion
        n = x_in.shape[0]
        if self.s.encode == "ddim":
            return ddim_pass(self, x_in, anchor, lam)
        x_t = noise_to(d, x_in, self.s.tau, self.s.noise_convention, gens)  # eq. (1)
        if self.s.method in X0_METHODS and (self.s.grad_at == "previous" or self.s.mask):
            return self._pass_fastdime(x_in, x_t, anchor, lam, gens)
        nfe = 0
        for i in reversed(range(self.s.tau)):
            t = torch.full((n,), i, device=x_in.device, dtype=torch.long)
            if self.s.method == "diff-ice1-xt":
                x_t, used = self._step_xt(x_t, t, anchor, lam, gens)
            elif self.s.method == "dime":
                x_t, used = self._step_dime(x_t, t, anchor, lam, gens)
            else:
                x_t, used = self._step_x0(x_t, t, anchor, lam, gens)
            nfe += used
            if self.progress is not None:
                self.progress(f"step {i}")
        return x_t.detach(), nfe

    def _pass_fastdime(self, x_in, x_t, anchor, lam, gens):
        """The x0-gradient pass with FastDiME's options (Weng et al. 2024).

        ``grad_at=previous``: step t's gradient is taken at the previous step's x̂0 (the input at
        the first step), as FastDiME does, instead of at this step's own estimate.
        ``mask``: after ``mask_warmup`` steps, the normalised difference |x̂0 − x_in| (divided by
        its per-frame maximum) is dilated by a ``mask_dilation`` max-filter; where it stays below
        ``mask_threshold`` the frame is held to the input (x̂0 := x_in, x_t := x_in noised to the
        step's level), and the final frame takes the input there — changes stay where the
        guidance makes them.
        """
        d = self.diffusion
        n, shape = x_in.shape[0], tuple(x_in.shape[1:])
        prev_x0 = x_in
        keep = None  # 1 where the frame is held to the input
        for jdx, i in enumerate(reversed(range(self.s.tau))):
            t = torch.full((n,), i, device=x_in.device, dtype=torch.long)
            with torch.no_grad():
                out = d.p_mean_variance(self.model, x_t, t, clip_denoised=self.s.clip_denoised)
            at = prev_x0 if self.s.grad_at == "previous" else out["pred_xstart"]
            g = self.grad_x0(at, anchor, lam)
            x_t = guided_sample(out, g, t, randn_frames(gens, shape, x_t))
            prev_x0 = out["pred_xstart"].detach()
            if self.s.mask and jdx >= self.s.mask_warmup:
                keep = self._keep_mask(prev_x0, x_in)
                prev_x0 = prev_x0 * (1 - keep) + keep * x_in
                x_t = x_t * (1 - keep) + keep * d.q_sample(x_in, t, randn_frames(gens, shape, x_in))
            if self.progress is not None:
                self.progress(f"step {i}")
        if keep is not None:
            x_t = x_t * (1 - keep) + keep * x_in
        return x_t.detach(), self.s.tau

    def _keep_mask(self, x0: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
        """FastDiME's self-optimised mask, inverted: 1 where x̂0 stays close to the input."""
        diff = ((x0 - x_in).abs() / 2).sum(dim=1, keepdim=True)
        diff = diff / diff.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        k = self.s.mask_dilation
        dil = F.max_pool2d(diff, k, stride=1, padding=(k - 1) // 2)
        return (dil < self.s.mask_threshold).to(x0.dtype)

    # ------------------------------------------------------------------ steps

    def grad_x0(self, x0: torch.Tensor, anchor: Features, lam: torch.Tensor) -> torch.Tensor:
        """∇ of the summed per-frame loss (eq. 4) w.r.t. a detached clean estimate x0, float32 under any
        autocast the caller runs in (the networks at ``cf.autocast``'s precision)."""
        x0 = x0.detach().float().requires_grad_(True)
        with torch.enable_grad(), no_autocast(x0):
            loss = self.loss(x0, anchor, lam).sum()
            (g,) = torch.autograd.grad(loss, x0)
        return coarse(g, self.s.grad_sigma)

    def _step_x0(self, x_t, t, anchor, lam, gens):
        """Diff-ICE / FastDiME step: g = ∇_{x̂0|t} L, no backpropagation through the denoiser."""
        with torch.no_grad():
            out = self.diffusion.p_mean_variance(self.model, x_t, t, clip_denoised=self.s.clip_denoised)
        g = self.grad_x0(out["pred_xstart"], anchor, lam)
        return guided_sample(out, g, t, randn_frames(gens, x_t.shape[1:], x_t)), 1

    def _step_xt(self, x_t, t, anchor, lam, gens):
        """Diff-ICE1-xt step: g = ∇_{x_t} L(x̂0|t(x_t)), backpropagating through the denoiser (float32
        under any autocast the caller runs in, as :meth:`grad_x0`)."""
        x_in = x_t.detach().float().requires_grad_(True)
        with torch.enable_grad(), no_autocast(x_in):
            out = self.diffusion.p_mean_variance(self.model, x_in, t, clip_denoised=self.s.clip_denoised)
            loss = self.loss(out["pred_xstart"].float(), anchor, lam).sum()
            (g,) = torch.autograd.grad(loss, x_in)
        g = coarse(g, self.s.grad_sigma)
        out = {k: v.detach() for k, v in out.items()}
        return guided_sample(out, g, t, randn_frames(gens, x_t.shape[1:], x_t)), 1

    def _sqrt_alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """sqrt(ᾱ_t) of the respaced schedule, read through q_sample (x0 = 1, noise = 0)."""
        ones = torch.ones((t.shape[0], 1, 1, 1), device=like.device, dtype=torch.float32)
        return self.diffusion.q_sample(ones, t, torch.zeros_like(ones))

    def _step_dime(self, x_t, t, anchor, lam, gens):
        """DiME step: an unguided chain x_t -> clean, g = ∇_clean L / sqrt(ᾱ_t). Costs t+1 calls."""
        d = self.diffusion
        shape = x_t.shape[1:]
        i = int(t[0])
        with torch.no_grad():
            out = d.p_mean_variance(self.model, x_t, t, clip_denoised=self.s.clip_denoised)
            z = guided_sample(out, torch.zeros_like(x_t), t, randn_frames(gens, shape, x_t))
            for j in reversed(range(i)):
                tj = torch.full_like(t, j)
                o = d.p_mean_variance(self.model, z, tj, clip_denoised=self.s.clip_denoised)
                z = guided_sample(o, torch.zeros_like(z), tj, randn_frames(gens, shape, z))
        g = self.grad_x0(z, anchor, lam) / self._sqrt_alpha_bar(t, x_t)
        return guided_sample(out, g, t, randn_frames(gens, shape, x_t)), i + 1
