"""The denoising UNet: diffusers' ``UNet2DModel`` laid out like guided-diffusion's UNet.

Guided-diffusion (Dhariwal & Nichol 2021), as used by DiME and Diff-ICE, is mapped onto
diffusers' building blocks as follows:

=============================  ==========================================================
guided-diffusion               diffusers ``UNet2DModel``
=============================  ==========================================================
``model_channels * mult``      ``block_out_channels``
``num_res_blocks``             ``layers_per_block`` (up blocks get one more, as in g-d)
``use_scale_shift_norm``       ``resnet_time_scale_shift="scale_shift"``
``resblock_updown``            ``ResnetDownsampleBlock2D`` / ``ResnetUpsampleBlock2D`` and
                               ``downsample_type`` / ``upsample_type="resnet"``
``attention_resolutions``      ``AttnDownBlock2D`` / ``AttnUpBlock2D`` at those levels
``num_head_channels``          ``attention_head_dim``
``learn_sigma``                ``out_channels = 2 * in_channels`` (epsilon, variance value)
GroupNorm32                    ``norm_num_groups=32`` (fewer when the widths are small)
=============================  ==========================================================

``attention_resolutions`` are *downsampling factors* (1, 2, 4, ... at levels 0, 1, 2, ...),
so the same config means the same architecture at any frame size. The middle block always
has attention, as in guided-diffusion. Frames need not be square: each side must only be
divisible by ``2 ** (len(channel_mult) - 1)`` (224x288 with six levels -> 7x9 at the bottom).

Differences that remain (not matters of the maths): diffusers does not zero-initialise the
last convolution of each residual block and of the output, and its attention uses a
linear-projection layout. Weights are therefore not interchangeable with guided-diffusion's.
"""

from __future__ import annotations

import math

import torch
from diffusers import UNet2DModel
from omegaconf import DictConfig
from torch import nn

from diffice.errors import UserError

IN_CHANNELS = 1  # grey frames, see the image contract


class UNet(nn.Module):
    """``model(x, t) -> (B, out_channels, H, W)``.

    ``x``: noisy frames (B, 1, H, W), nominally in [-1, 1] at t = 0 and unit-variance noise at
    t = T - 1; ``t``: original (un-respaced) timesteps, LongTensor (B,) or a scalar. With
    learned variance the output holds epsilon in channel 0 and the variance value v in
    [-1, 1]-ish in channel 1 (see ``GaussianDiffusion.p_mean_variance``).
    """

    def __init__(self, net: UNet2DModel, downsample_factor: int, coord_channels: bool = False):
        super().__init__()
        self.net = net
        self.downsample_factor = downsample_factor
        self.coord_channels = coord_channels

    @property
    def in_channels(self) -> int:
        return self.net.config.in_channels

    @property
    def out_channels(self) -> int:
        return self.net.config.out_channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None,
                coords: torch.Tensor | None = None) -> torch.Tensor:
        """``coords`` (B, 2, H, W): where each pixel of a training patch lies in the whole frame (a
        UNet with ``coord_channels`` only; None = ``x`` is a whole frame, see :func:`frame_coords`)."""
        h, w = x.shape[-2:]
        f = self.downsample_factor
        if h % f or w % f:
            raise UserError(
                f"frame size {h}x{w} is not divisible by {f} (= 2 ** (len(unet.channel_mult) - 1)); "
                "change data.image_size or unet.channel_mult"
            )
        if not torch.is_tensor(t):
            t = torch.tensor([t], device=x.device)
        t = t.to(x.device).reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t.to(x.device)
        if self.coord_channels:
            if coords is None:
                coords = frame_coords(x.shape[0], h, w, x.device)
            x = torch.cat([x, coords.to(x.dtype)], dim=1)
        return self.net(x, t, class_labels=class_labels).sample


def frame_coords(batch: int, h: int, w: int, device=None) -> torch.Tensor:
    """(batch, 2, h, w): x and y of every pixel of an h x w frame, each in [-1, 1] (Patch Diffusion's
    coordinate channels; a training patch takes its crop of the whole frame's)."""
    ys = torch.linspace(-1.0, 1.0, h, device=device)
    xs = torch.linspace(-1.0, 1.0, w, device=device)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy])[None].expand(batch, 2, h, w)


def _norm_groups(widths: list[int]) -> int:
    """32 groups as guided-diffusion's GroupNorm32, or the largest divisor of every width below that."""
    g = 0
    for w in widths:
        g = math.gcd(g, w)
    return max(d for d in range(1, 33) if g % d == 0)


def build_unet(cfg: DictConfig, *, extra_in_channels: int = 0, class_embedding: bool = False) -> UNet:
    """The guided-diffusion style UNet described by ``cfg.unet`` and ``cfg.diffusion.learn_sigma``.

    ``extra_in_channels``: condition channels concatenated after the frame (the synthesis
    layer's layout); ``class_embedding``: ``forward`` takes ``class_labels``, a vector of the
    timestep embedding's width added to it (diffusers' ``class_embed_type="identity"``)."""
    u = cfg.unet
    mult = [int(m) for m in u.channel_mult]
    if not mult or min(mult) < 1:
        raise UserError(f"unet.channel_mult={list(mult)}: expected a non-empty list of positive integers")
    widths = [int(u.model_channels) * m for m in mult]
    head = int(u.num_head_channels)
    attn_factors = {int(a) for a in u.attention_resolutions}
    factors = [2**i for i in range(len(mult))]
    unknown = sorted(attn_factors - set(factors))
    if unknown:
        raise UserError(
            f"unet.attention_resolutions={sorted(attn_factors)}: factors {unknown} are not among this UNet's "
            f"downsampling factors {factors} (one per unet.channel_mult level)"
        )
    attn_widths = [w for w, f in zip(widths, factors) if f in attn_factors] + [widths[-1]]  # + middle block
    bad = [w for w in attn_widths if w % head]
    if bad:
        raise UserError(f"unet.num_head_channels={head} does not divide the attention widths {bad}")

    updown = bool(u.resblock_updown)
    down, up = [], []
    for f in factors:
        attn = f in attn_factors
        down.append("AttnDownBlock2D" if attn else ("ResnetDownsampleBlock2D" if updown else "DownBlock2D"))
        up.append("AttnUpBlock2D" if attn else ("ResnetUpsampleBlock2D" if updown else "UpBlock2D"))
    out_channels = IN_CHANNELS * (2 if cfg.diffusion.learn_sigma else 1)
    net = UNet2DModel(
        sample_size=tuple(int(s) for s in cfg.data.image_size),
        in_channels=IN_CHANNELS + int(extra_in_channels) + (2 if u.coord_channels else 0),
        class_embed_type="identity" if class_embedding else None,
        out_channels=out_channels,
        # guided-diffusion's timestep embedding: [cos, sin] with frequencies exp(-ln(1e4) i / half)
        time_embedding_type="positional",
        flip_sin_to_cos=True,
        freq_shift=0,
        down_block_types=tuple(down),
        up_block_types=tuple(reversed(up)),
        block_out_channels=tuple(widths),
        layers_per_block=int(u.num_res_blocks),
        downsample_type="resnet" if updown else "conv",
        upsample_type="resnet" if updown else "conv",
        dropout=float(u.dropout),
        attention_head_dim=head,
        norm_num_groups=_norm_groups(widths),
        resnet_time_scale_shift="scale_shift" if u.use_scale_shift_norm else "default",
        add_attention=True,
    )
    return UNet(net, downsample_factor=factors[-1], coord_channels=bool(u.coord_channels))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
