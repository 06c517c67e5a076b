"""The layout-conditioned denoiser of the synthesis layer (FetalFlex, as diffice interprets it).

``ConditionalUNet(x, t, layout, plane, ga)`` is :func:`diffice.nets.unet.build_unet`'s UNet
with more input channels and an extra embedding:

* **layout**: one-hot channels of the data config's mask classes, (B, C, H, W), concatenated
  with x_t. A pixel whose channels are all zero is *unspecified* (a dropped structure, or the
  whole layout dropped), which is how condition dropout and incomplete layouts are written.
* **plane** (0 trans-thalamic, 1 trans-ventricular, 2 trans-cerebellar, -1 unknown) and
  **ga** (gestational age in weeks, NaN unknown): embedded and added to the timestep
  embedding (diffusers' ``class_embed_type="identity"``), as guided-diffusion adds its class
  embedding. Unknown is a learned "null" vector, not a zero.
* **pre-alignment** (``synthesis.prealign``): a small layout encoder ``prealign`` maps the
  layout to the frame it most likely belongs to (one grey channel, trained alone first with an
  L1 loss against the real frame, then frozen); its output is concatenated as one more input
  channel. The denoiser then starts from a condition already in image space (where the skull
  is bright, the brain dark, the cavum an anechoic box) instead of learning that mapping from
  the noisy diffusion loss. See docs/synthesis.md for why this choice and what it measured.
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import nn

from diffice.nets.unet import IN_CHANNELS, UNet, build_unet

NUM_PLANES = 3
GA_MEAN, GA_SCALE = 27.0, 9.0  # weeks: (ga - mean) / scale is about [-1, 1] over 18 to 36 weeks


def one_hot_layout(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) int class indices (-1 unknown) -> (B, C, H, W) float one-hot; -1 -> all zero."""
    known = mask >= 0
    oh = torch.nn.functional.one_hot(mask.clamp(min=0).long(), num_classes).permute(0, 3, 1, 2).float()
    return oh * known[:, None].float()


class LayoutEncoder(nn.Module):
    """Layout (B, C, H, W) -> the expected frame (B, 1, H, W) in [-1, 1]: a small fully
    convolutional net with a dilated middle (the receptive field sees a whole head at 64x80)."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        w = int(width)

        def block(cin, cout, dilation=1):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation), nn.GroupNorm(8 if cout % 8 == 0 else 1, cout), nn.SiLU())

        self.net = nn.Sequential(
            block(num_classes, w), block(w, w, 2), block(w, w, 4), block(w, w, 8), block(w, w, 2), nn.Conv2d(w, IN_CHANNELS, 3, padding=1)
        )

    def forward(self, layout: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(layout))


class ConditionEmbedding(nn.Module):
    """Plane and gestational age -> a vector added to the timestep embedding."""

    def __init__(self, dim: int):
        super().__init__()
        self.plane = nn.Embedding(NUM_PLANES + 1, dim)  # row 0 = unknown / dropped
        self.ga = nn.Sequential(nn.Linear(2, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.ga_null = nn.Parameter(torch.zeros(dim))

    @torch.no_grad()
    def zero_(self) -> ConditionEmbedding:
        """Output zero for every plane and GA (plane rows, the GA net's last layer, the null GA vector): a
        conditional net so started computes what its unconditional UNet does (``synthesis.init_ckpt``=DDPM)."""
        for t in (self.plane.weight, self.ga[-1].weight, self.ga[-1].bias, self.ga_null):
            t.zero_()
        return self

    def forward(self, plane: torch.Tensor, ga: torch.Tensor) -> torch.Tensor:
        p = self.plane((plane.long() + 1).clamp(0, NUM_PLANES))
        known = torch.isfinite(ga)
        z = torch.where(known, (ga - GA_MEAN) / GA_SCALE, torch.zeros_like(ga)).float()
        g = self.ga(torch.stack([z, torch.sin(math.pi * z / 2)], dim=1))
        g = torch.where(known[:, None], g, self.ga_null.expand_as(g))
        return p + g


class ConditionalUNet(nn.Module):
    """``forward(x, t, layout, plane, ga)``; ``x`` (B, 1, H, W), ``layout`` (B, C, H, W) one-hot
    (zeros = unspecified), ``plane`` int (B,), ``ga`` float (B,) weeks (NaN unknown)."""

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.num_classes = len(cfg.data.classes)
        self.prealign_enabled = bool(cfg.synthesis.prealign)
        extra = self.num_classes + (1 if self.prealign_enabled else 0)
        self.unet: UNet = build_unet(cfg, extra_in_channels=extra, class_embedding=True)
        dim = int(self.unet.net.config.block_out_channels[0]) * 4  # diffusers' time_embed_dim
        self.embed = ConditionEmbedding(dim)
        self.prealign = LayoutEncoder(self.num_classes, int(cfg.synthesis.prealign_width)) if self.prealign_enabled else None

    @property
    def out_channels(self) -> int:
        return self.unet.out_channels

    def appearance(self, layout: torch.Tensor) -> torch.Tensor:
        """The pre-alignment encoder's frame for ``layout`` (requires ``synthesis.prealign``)."""
        return self.prealign(layout)

    def forward(self, x: torch.Tensor, t: torch.Tensor, layout: torch.Tensor, plane: torch.Tensor, ga: torch.Tensor) -> torch.Tensor:
        parts = [x, layout.to(x.dtype)]
        if self.prealign is not None:
            with torch.no_grad():  # frozen after pre-alignment: the diffusion loss does not move it
                parts.append(self.prealign(layout.float()).to(x.dtype))
        emb = self.embed(plane.to(x.device), ga.to(x.device)).to(x.dtype)
        return self.unet(torch.cat(parts, dim=1), t, class_labels=emb)


def null_condition(batch: int, num_classes: int, size: tuple[int, int], device) -> dict[str, torch.Tensor]:
    """The dropped condition: no layout, unknown plane and GA (classifier-free guidance's u)."""
    h, w = size
    return {
        "layout": torch.zeros(batch, num_classes, h, w, device=device),
        "plane": torch.full((batch,), -1, dtype=torch.long, device=device),
        "ga": torch.full((batch,), math.nan, device=device),
    }


class Conditioned(nn.Module):
    """``model(x, t)`` for the diffusion core: the conditional net at a fixed condition, with
    classifier-free guidance of weight ``w`` (eps = eps_u + w (eps_c - eps_u); the variance
    channel is the conditional one). ``w = 1`` runs the conditional net alone."""

    def __init__(self, net: ConditionalUNet, cond: dict[str, torch.Tensor], w: float = 1.0):
        super().__init__()
        self.net, self.cond, self.w = net, cond, float(w)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = self.cond
        if self.w == 1.0:
            return self.net(x, t, c["layout"], c["plane"], c["ga"])
        b = x.shape[0]
        null = null_condition(b, c["layout"].shape[1], tuple(x.shape[-2:]), x.device)
        t2 = t.reshape(-1).expand(b) if t.numel() == 1 else t
        out = self.net(
            torch.cat([x, x]), torch.cat([t2, t2]),
            torch.cat([c["layout"], null["layout"]]), torch.cat([c["plane"], null["plane"]]), torch.cat([c["ga"], null["ga"]]),
        )
        cond, uncond = out[:b], out[b:]
        eps = uncond[:, :IN_CHANNELS] + self.w * (cond[:, :IN_CHANNELS] - uncond[:, :IN_CHANNELS])
        return torch.cat([eps, cond[:, IN_CHANNELS:]], dim=1)
