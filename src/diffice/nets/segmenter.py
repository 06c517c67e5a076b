"""Segmentation networks: ``build_segmenter(cfg, num_classes) -> nn.Module``, x -> logits.

The default is a segmentation-models-pytorch U-Net on an smp/timm encoder
(``cfg.segmenter.encoder``, e.g. resnet18/resnet34), built with ``encoder_weights=None`` so
nothing is downloaded; ``cfg.segmenter.encoder_weights`` may name a local state-dict file for
the encoder. The paper's segmenter is a DTU-Net: add it with ``@register_segmenter("dtunet")``
and select it with ``segmenter.arch=dtunet``; every consumer only uses ``build_segmenter``.

Intensities: input (B, 1, H, W) in [-1, 1]; output logits (B, K, H, W) at the input size.
Any H, W works: the input is padded (with -1, i.e. black) to the encoder's stride and the
logits are cropped back.

Loss (:func:`dice_ce_loss`): cross-entropy + soft Dice, pixels labelled -1 ignored (the hard Dice
that scores a segmentation is :mod:`diffice.nets.dice`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from diffice.errors import UserError
from diffice.nets.weights import load_matching, read_checkpoint, read_state_dict

SEGMENTERS: dict[str, Callable[..., nn.Module]] = {}


def register_segmenter(name: str):
    """Decorator: register ``factory(encoder, in_channels, num_classes, decoder_channels=None) -> nn.Module``
    (``decoder_channels``: the decoder's widths, deepest first; None = the architecture's default)."""

    def deco(factory):
        SEGMENTERS[name] = factory
        return factory

    return deco


class PaddedSegmenter(nn.Module):
    """Pads (B, C, H, W) to a multiple of ``stride`` with ``pad_value``, runs ``net``, crops back.

    ``self.encoder`` is the wrapped net's encoder (used as a perceptual feature network)."""

    def __init__(self, net: nn.Module, stride: int = 32, pad_value: float = -1.0):
        super().__init__()
        self.net = net
        self.stride = stride
        self.pad_value = pad_value

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph = (-h) % self.stride
        pw = (-w) % self.stride
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), value=self.pad_value)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return self.net(self.pad(x))[..., :h, :w]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder feature maps at strides 2..32 (the identity stage dropped). No padding:
        convolutional encoders take any size, and padding would mix black borders in."""
        return list(self.net.encoder(x)[1:])


def _smp(arch: str):
    def factory(encoder: str, in_channels: int, num_classes: int, decoder_channels=None) -> nn.Module:
        import segmentation_models_pytorch as smp

        cls = getattr(smp, arch)
        extra = {}
        if decoder_channels is not None:
            key = "decoder_channels" if arch != "FPN" else "decoder_segmentation_channels"
            extra[key] = tuple(int(c) for c in decoder_channels) if arch != "FPN" else int(decoder_channels[-1])
        try:
            net = cls(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes, **extra)
        except (KeyError, ValueError) as err:
            raise UserError(f"segmenter.encoder: '{encoder}' is not an encoder segmentation-models-pytorch knows ({err})") from err
        return PaddedSegmenter(net, stride=32)

    return factory


register_segmenter("unet")(_smp("Unet"))
register_segmenter("unetplusplus")(_smp("UnetPlusPlus"))
register_segmenter("fpn")(_smp("FPN"))


def load_encoder_weights(net: nn.Module, path: str | os.PathLike, key: str) -> None:
    """Load a local state dict into ``net.encoder`` (prefixes ``module.``/``encoder.`` stripped)."""
    clean = read_state_dict(path, key, prefixes=("module.", "encoder.", "backbone."),
                            hint=f" (set {key}=null to train from scratch)")
    enc = net.encoder
    # a grey model: fold RGB first-layer kernels into one channel by summing (as smp does)
    own_state = enc.state_dict()
    for k, v in clean.items():
        own = own_state.get(k)
        if own is not None and v.ndim == 4 and own.ndim == 4 and v.shape[1] == 3 and own.shape[1] == 1:
            clean[k] = v.sum(dim=1, keepdim=True)
    load_matching(enc, clean, path, f"the {key} encoder")


def build_segmenter(cfg, num_classes: int, load_pretrained: bool = True, *, section: str = "segmenter",
                    encoder: str | None = None) -> nn.Module:
    """The segmentation network described by ``cfg.segmenter`` (x in [-1, 1] -> logits)."""
    sec = cfg[section]
    arch = sec.get("arch", "unet")
    if arch not in SEGMENTERS:
        raise UserError(f"{section}.arch: unknown architecture '{arch}' (known: {', '.join(sorted(SEGMENTERS))})")
    net = SEGMENTERS[arch](encoder or sec.encoder, 1, num_classes, decoder_channels=sec.get("decoder_channels"))
    weights = sec.get("encoder_weights")
    if load_pretrained and weights:
        load_encoder_weights(net, weights, f"{section}.encoder_weights")
    return net


# ----------------------------------------------------------------------------- loss


def dice_ce_loss(logits: torch.Tensor, mask: torch.Tensor, eps: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy + (1 - mean soft Dice over classes); ``mask`` (B,H,W) int64, -1 = ignore.

    Returns (loss, soft dice per class). With no known pixel the loss is 0 (still a graph)."""
    valid = mask >= 0
    if not bool(valid.any()):
        zero = logits.sum() * 0.0
        return zero, torch.zeros(logits.shape[1], device=logits.device)
    ce = F.cross_entropy(logits, mask.clamp_min(0), reduction="none")
    ce = (ce * valid).sum() / valid.sum()
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(mask.clamp_min(0), logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    v = valid.unsqueeze(1).to(probs.dtype)
    inter = (probs * onehot * v).sum(dim=(0, 2, 3))
    denom = ((probs + onehot) * v).sum(dim=(0, 2, 3))
    dice = (2 * inter + eps) / (denom + eps)
    return ce + (1.0 - dice.mean()), dice.detach()


def load_segmenter_checkpoint(path: str | os.PathLike) -> nn.Module:
    """The segmentation net of a diffice "segmenter" checkpoint, without Lightning (eval mode).

    (``diffice.modules.common.load_checkpoint(path, "segmenter").net`` gives the same net;
    this reader exists so that ``nets/`` need not import the Lightning layer.)"""
    from diffice.config import from_dict

    ckpt = read_checkpoint(path, "segmenter")
    cfg = from_dict(ckpt["diffice"]["config"])
    net = build_segmenter(cfg, len(cfg.data.classes), load_pretrained=False)
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(state)
    return net.eval()
