"""Sparse refinement: a counterfactual that changes only where it must (issue 23).

A dense counterfactual (any x̂0 method) redraws the whole frame: noising to τ and denoising
replaces the speckle everywhere, so the difference to the input is mostly noise and a reader cannot
see what had to change. The refinement, after ACE (Jeanneret et al., CVPR 2023), keeps the dense
result only where it changed the frame in earnest and inpaints that region again with the rest of
the frame held to the input:

1. **Mask** ``m`` (1 = may change), from the input x and the dense counterfactual x_c:

   - ``diff``: where the low-passed difference |G_σ * (x_c − x)| exceeds ``threshold`` (the
     Gaussian removes the redrawn speckle, which averages out; what stays is a change of the
     anatomy or of the brightness at the scale of σ);
   - ``layout``: where the guide's segmentation of x_c differs from that of x (only diffice can:
     the change of the anatomy's layout is what an SP needs), first *opened* by ``opening``
     pixels (eroded, then dilated back): a structure's outline that merely moved by a pixel or two
     — the segmentation's reading of redrawn speckle — goes, a structure that appeared, vanished or
     moved in earnest stays (measured: ``bench/sparse_masks.py``). ``opening`` is a list, sparsest
     first: a frame whose refinement the guide does not call SP is refined again from its dense
     counterfactual with the next (less opened, larger) mask, so each frame gets the sparsest mask
     of the list that still explains the guide's call (the last one is kept in any case);
   - ``both``: the union of the two (a fault the layout does not see, an echo blob inside the
     head, is still repaired where the low-passed change is large);
   - ``guide``: where the guide itself sees the input as non-standard: its evidence map (the SP
     logit before global pooling, one value per 16x16 px cell of a SonoNet, bilinearly upsampled;
     :meth:`~diffice.nets.guide.Guide.evidence`) lies below its decision logit. A fault over the
     whole frame (noise, gain, defocus) marks the whole frame, a local one (a shadow, a
     reverberation ghost) its region — what a two-class layout cannot see on real frames;
   - ``raised``: where the counterfactual raised the guide's evidence most: the ``share`` of the
     imaged sector (low-passed input brighter than black) with the largest evidence(x_c) −
     evidence(x) — what the dense result changed *to convince the guide*, not what a λc = 0 pass
     would redraw anyway. Measured on 96 real faulted frames by pasting the dense result
     (docs/real_data.md): it keeps the guided run's repairs and drops the control's redrawn texture;

   then grown by ``dilation`` pixels (a max filter), so the inpainting can blend its border.

2. **Inpainting pass** (RePaint's known-region step): the frame is noised to respaced step
   ``tau`` (inside the mask from x_c, outside from x) and denoised to step 0; after every step the
   outside is replaced by the input noised to the next step's level, so the denoiser always sees
   the held frame around the region it redraws. With ``guided`` the step keeps the method's
   guidance (eq. 4, the frame's λc), its gradient taken at x̂0 with the outside held and zeroed
   outside the mask.

3. **Paste**: the result is ``m · x_0 + (1 − m) · x`` — outside the mask the counterfactual
   *is* the input, bit for bit (:func:`paste` guarantees it; a test checks it).

Cost: ``tau`` more denoiser calls per frame (and one guide segmentation for ``layout``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from diffice.counterfactual.seeding import randn_frames
from diffice.errors import UserError
from diffice.metrics.target import grow, imaged_sector, low_pass

MASKS = ("none", "diff", "layout", "both", "guide", "raised")


@dataclass
class SparseSettings:
    """The ``cf.sparse*`` keys."""

    mask: str = "none"        # one of MASKS
    threshold: float = 0.1    # diff: low-passed |x_c − x| above this ([-1, 1] units) may change
    sigma: float = 2.0        # diff: Gaussian σ in pixels of the low-pass
    dilation: int = 2         # the mask grows by this many pixels
    opening: tuple[int, ...] = (0,)  # layout: changes thinner than ~2·opening + 1 px dropped; tried in order
    tau: int = 10             # respaced step the inpainting pass starts from
    guided: bool = True       # the inpainting pass keeps the method's guidance
    share: float = 0.25       # raised: the share of the imaged sector the mask keeps

    @classmethod
    def from_config(cls, c) -> SparseSettings:
        return cls(mask=str(c.sparse), threshold=float(c.sparse_threshold), sigma=float(c.sparse_sigma),
                   dilation=int(c.sparse_dilation), tau=int(c.sparse_tau), guided=bool(c.sparse_guided),
                   opening=openings(c.sparse_opening), share=float(c.sparse_share))

    @property
    def on(self) -> bool:
        return self.mask != "none"

    @property
    def uses_layout(self) -> bool:
        """The mask needs the guide's segmenter."""
        return self.mask in ("layout", "both")

    @property
    def uses_evidence(self) -> bool:
        """The mask needs the guide's evidence map."""
        return self.mask in ("guide", "raised")

    def validate(self, num_timesteps: int | None = None) -> None:
        if self.mask not in MASKS:
            raise UserError(f"cf.sparse: '{self.mask}' is not one of {', '.join(MASKS)}")
        if not self.on:
            return
        if self.tau < 1 or (num_timesteps is not None and self.tau > num_timesteps):
            raise UserError(f"cf.sparse_tau: {self.tau} must lie in 1..{num_timesteps or 'cf.respacing steps'}")
        if self.dilation < 0:
            raise UserError(f"cf.sparse_dilation: {self.dilation} must be 0 or more pixels")
        if not self.opening or any(o < 0 for o in self.opening):
            raise UserError(f"cf.sparse_opening: {list(self.opening)} must be one or more pixel counts of 0 or more")
        if not 0.0 < self.threshold < 2.0:
            raise UserError(f"cf.sparse_threshold: {self.threshold} must lie in (0, 2) ([-1, 1] image units)")
        if self.sigma < 0:
            raise UserError(f"cf.sparse_sigma: {self.sigma} must be 0 or more pixels")
        if not 0.0 < self.share <= 1.0:
            raise UserError(f"cf.sparse_share: {self.share} must lie in (0, 1] (a share of the imaged sector)")


def openings(value) -> tuple[int, ...]:
    """``cf.sparse_opening`` as a tuple: one pixel count or a list of them."""
    items = [value] if isinstance(value, int | float | str) else value
    try:
        return tuple(int(v) for v in items)
    except (TypeError, ValueError) as err:
        raise UserError(f"cf.sparse_opening: {value!r} is not a pixel count or a list of them") from err


def change_mask(x: torch.Tensor, cf: torch.Tensor, s: SparseSettings,
                segment: Callable[[torch.Tensor], torch.Tensor] | None = None, opening: int | None = None,
                evidence: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(B,1,H,W) float 0/1: where the refinement may change the frame (step 1 of the module doc);
    the layout change is opened by ``opening`` pixels (default: the first of ``s.opening``);
    ``evidence(x)`` (B,1,H,W): the guide's SP evidence less its decision logit (``guide`` mask)."""
    if not s.on or s.mask not in MASKS:
        raise UserError(f"cf.sparse: '{s.mask}' makes no mask")
    m = torch.zeros_like(x[:, :1], dtype=torch.float32)
    if s.mask in ("diff", "both"):
        d = low_pass((cf - x).float(), s.sigma).abs() if s.sigma > 0 else (cf - x).abs()
        m = torch.maximum(m, (d > s.threshold).float())
    if s.uses_layout:
        if segment is None:
            raise UserError(f"cf.sparse={s.mask} needs the guide's segmenter")
        with torch.no_grad():
            changed = (segment(x).argmax(1, keepdim=True) != segment(cf).argmax(1, keepdim=True)).float()
        m = torch.maximum(m, opened(changed, s.opening[0] if opening is None else opening))
    if s.uses_evidence:
        if evidence is None:
            raise UserError(f"cf.sparse={s.mask} needs the guide's evidence map (a SonoNet guide)")
        with torch.no_grad():
            if s.mask == "guide":
                m = torch.maximum(m, (evidence(x).float() < 0).float())
            else:
                m = torch.maximum(m, top_share((evidence(cf) - evidence(x)).float(), sector(x), s.share))
    return grow(m, s.dilation)


def sector(x: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) bool: the imaged sector, where the low-passed frame is brighter than black."""
    return imaged_sector(x[:, :1].float(), 2.0)


def top_share(score: torch.Tensor, inside: torch.Tensor, share: float) -> torch.Tensor:
    """(B,1,H,W) float 0/1: per frame, the ``share`` of the ``inside`` pixels with the largest
    ``score`` (ties at the cut kept; a frame with nothing inside gets an empty mask)."""
    out = torch.zeros_like(score)
    for b in range(score.shape[0]):  # frame by frame: the cut never depends on the batch
        v = score[b][inside[b]]
        if v.numel():
            k = max(1, int(round(share * v.numel())))
            cut = torch.topk(v, k).values[-1]
            out[b] = ((score[b] >= cut) & inside[b]).float()
    return out


def opened(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Morphological opening of a (B,1,H,W) 0/1 mask by a square of side 2·pixels + 1: what a
    square that size cannot fit into (a thin rim, an isolated pixel) is removed, the rest kept."""
    if pixels <= 0:
        return mask
    return grow(-grow(-mask, pixels), pixels)


def paste(x: torch.Tensor, inside: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``inside`` where ``mask`` is 1, ``x`` itself (bit for bit) everywhere else."""
    return torch.where(mask > 0.5, inside, x)


def inpaint(engine, x: torch.Tensor, cf: torch.Tensor, mask: torch.Tensor, anchor, lam: torch.Tensor,
            gens: Sequence[torch.Generator], s: SparseSettings) -> torch.Tensor:
    """Step 2 and 3 of the module doc for a batch: ``engine`` gives the respaced diffusion, the
    denoiser and the guidance gradient (:class:`~diffice.counterfactual.engine.CounterfactualEngine`).
    Returns the refined frames; outside ``mask`` they equal ``x`` exactly."""
    from diffice.counterfactual.engine import guided_sample

    d = engine.diffusion
    n, shape = x.shape[0], tuple(x.shape[1:])

    def noised(img: torch.Tensor, index: int) -> torch.Tensor:
        t = torch.full((n,), index, device=x.device, dtype=torch.long)
        return d.q_sample(img, t, randn_frames(gens, shape, img))

    x_t = paste(noised(x, s.tau - 1), noised(cf, s.tau - 1), mask)
    for i in reversed(range(s.tau)):
        t = torch.full((n,), i, device=x.device, dtype=torch.long)
        with torch.no_grad():
            out = d.p_mean_variance(engine.model, x_t, t, clip_denoised=engine.s.clip_denoised)
        g = torch.zeros_like(x_t)
        if s.guided:
            g = engine.grad_x0(paste(x, out["pred_xstart"], mask), anchor, lam) * mask
        x_prev = guided_sample(out, g, t, randn_frames(gens, shape, x_t))
        known = noised(x, i - 1) if i > 0 else x
        x_t = paste(known, x_prev, mask)
        if engine.progress is not None:
            engine.progress(f"sparse step {i}")
    return paste(x, x_t.detach(), mask)
