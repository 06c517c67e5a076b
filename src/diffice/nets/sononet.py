"""SonoNet-16/32/64 (Baumgartner et al., "SonoNet: Real-Time Detection and Localisation of
Fetal Standard Scan Planes in Freehand Ultrasound", IEEE TMI 2017).

Layout (checked against the shapes of the authors' released ``SonoNet16.npz``)::

    stage 1: 2 x [conv3x3 F   - BN - ReLU]            maxpool 2
    stage 2: 2 x [conv3x3 2F  - BN - ReLU]            maxpool 2
    stage 3: 3 x [conv3x3 4F  - BN - ReLU]            maxpool 2
    stage 4: 3 x [conv3x3 8F  - BN - ReLU]            maxpool 2
    stage 5: 3 x [conv3x3 8F  - BN - ReLU]
    adaptation: conv1x1 4F - BN - ReLU, conv1x1 K - BN   (no ReLU on the class maps)
    global average pooling over the K class maps -> logits (B, K)

Convolutions have no bias (batch norm follows each). F = 16 for SonoNet-16.

Intensities: ``standardize=True`` (set by :meth:`SonoNet.from_official`) normalises each
image inside ``forward`` to zero mean and unit standard deviation times 255, the original
release's preprocessing, so an official network takes grey frames in any range
(e.g. [-1, 1]); the operation is idempotent. Networks trained here take [-1, 1] directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffice.errors import UserError

# The 14 outputs of the official release, in its order.
OFFICIAL_CLASSES = [
    "3VV", "4CH", "Abdominal", "Background", "Brain (Cb.)", "Brain (Tv.)", "Femur",
    "Kidneys", "Lips", "LVOT", "Profile", "RVOT", "Spine (cor.)", "Spine (sag.)",
]
# Original preprocessing: crop (rows, cols) of the 975x735 frames, then resize to (H, W).
OFFICIAL_CROP = (115, 734, 81, 874)
OFFICIAL_SIZE = (224, 288)
LASAGNE_BN_EPS = 1e-4  # only used to document the conversion; Lasagne stores inv_std directly


def _stage_plan(features: int) -> list[tuple[int, int]]:
    """(channels, convolutions) for the five stages."""
    f = features
    return [(f, 2), (2 * f, 2), (4 * f, 3), (8 * f, 3), (8 * f, 3)]


def _conv_bn_relu(cin: int, cout: int, k: int, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Per-image zero mean, unit std, times 255 (the SonoNet release's normalisation)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return (x - mean) / std * 255.0


def safe_pool(x: torch.Tensor) -> torch.Tensor:
    """2x2 max pooling (floor, like Lasagne's ignore_border=True) that leaves a map alone
    once a side is below 2 pixels, so tiny frames (e.g. 32x40, 16x20) never collapse to 0."""
    if min(x.shape[-2:]) < 2:
        return x
    return F.max_pool2d(x, 2)


class SonoNet(nn.Module):
    """SonoNet with ``features`` in {16, 32, 64}; ``forward(x) -> (B, num_classes)`` logits.

    ``final_bn=False`` replaces the batch norm after the last 1x1 convolution with a bias
    (used when ``num_classes == 1``, where normalising a single logit map is pointless).
    """

    def __init__(
        self,
        features: int = 16,
        in_channels: int = 1,
        num_classes: int = 14,
        *,
        final_bn: bool = True,
        standardize: bool = False,
    ):
        super().__init__()
        if features not in (16, 32, 64):
            raise UserError(f"guide.sononet: SonoNet width must be 16, 32 or 64, got {features}")
        self.width = features
        self.num_classes = num_classes
        self.standardize = standardize
        stages = []
        cin = in_channels
        for cout, n in _stage_plan(features):
            blocks = []
            for _ in range(n):
                blocks.append(_conv_bn_relu(cin, cout, 3))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.feature_dim = cin
        hidden = 4 * features
        if final_bn:
            last: nn.Module = _conv_bn_relu(hidden, num_classes, 1, relu=False)
        else:
            last = nn.Conv2d(hidden, num_classes, 1, bias=True)
        self.adaptation = nn.Sequential(_conv_bn_relu(cin, hidden, 1), last)

    # ------------------------------------------------------------------ forward passes
    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return standardize(x) if self.standardize else x

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Output of each of the five stages (before its pooling)."""
        x = self._prep(x)
        out = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = safe_pool(x)
            x = stage(x)
            out.append(x)
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled stage-5 features (B, 8F): the features of FSD / SonoSim."""
        return self.feature_maps(x)[-1].mean(dim=(2, 3))

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) class score maps of the adaptation layer (localisation maps)."""
        return self.adaptation(self.feature_maps(x)[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.class_maps(x).mean(dim=(2, 3))

    # ------------------------------------------------------------------ official weights
    @classmethod
    def from_official(cls, path: str | os.PathLike, features: int = 16) -> SonoNet:
        """Load the authors' Lasagne weights (``SonoNet16.npz``): 14 classes, one grey channel.

        The arrays come in Lasagne parameter order: per convolution its W (no bias), then
        the batch norm's beta, gamma, mean, inv_std. Lasagne's batch norm computes
        ``(x - mean) * inv_std * gamma + beta`` with ``inv_std = 1 / sqrt(var + eps)``, so the
        PyTorch running variance is ``1 / inv_std**2 - eps_torch``. Lasagne was built with
        ``flip_filters=False`` (cross-correlation, as PyTorch), so kernels are copied as they are.
        """
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: SonoNet weights not found (the official release's SonoNet{features}.npz)")
        try:
            data = np.load(path, allow_pickle=False)  # no object arrays: nothing in the file runs
            arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
        except Exception as err:  # noqa: BLE001 - a user file
            raise UserError(f"{path}: not a readable SonoNet .npz ({type(err).__name__})") from err
        net = cls(features=features, in_channels=1, num_classes=len(OFFICIAL_CLASSES), standardize=True)
        pairs = [(m, bn) for m, bn in _conv_bn_pairs(net)]
        if len(arrays) != 5 * len(pairs):
            raise UserError(
                f"{path}: holds {len(arrays)} arrays, a SonoNet-{features} needs {5 * len(pairs)} "
                "(is it the weights of another width?)"
            )
        with torch.no_grad():
            for i, (conv, bn) in enumerate(pairs):
                w, beta, gamma, mean, inv_std = arrays[5 * i : 5 * i + 5]
                if tuple(w.shape) != tuple(conv.weight.shape):
                    raise UserError(f"{path}: array arr_{5 * i} has shape {w.shape}, expected {tuple(conv.weight.shape)}")
                conv.weight.copy_(torch.from_numpy(w))
                bn.bias.copy_(torch.from_numpy(beta))
                bn.weight.copy_(torch.from_numpy(gamma))
                bn.running_mean.copy_(torch.from_numpy(mean))
                var = 1.0 / np.square(inv_std.astype(np.float64)) - bn.eps
                bn.running_var.copy_(torch.from_numpy(np.maximum(var, 0.0).astype(np.float32)))
        return net.eval()


def transfer_official(net: SonoNet, official: SonoNet) -> SonoNet:
    """Start ``net`` (any input channels, any head) from an official SonoNet of the same width.

    The five convolution stages and the adaptation layer's first 1x1 convolution (with their batch
    norms) are copied; of the first convolution only input channel 0 (the grey frame) is copied and
    the other input channels start at zero, so at the start ``net`` reads the frame exactly as the
    official network does; the last 1x1 convolution (the classes) keeps its fresh initialisation.
    Returns ``net``."""
    if net.width != official.width:
        raise UserError(f"guide.pretrained: a SonoNet-{official.width} cannot start a SonoNet-{net.width}")
    def body(n: SonoNet) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
        return [(blk[0], blk[1]) for stage in n.stages for blk in stage] + [tuple(n.adaptation[0][:2])]

    with torch.no_grad():
        for i, ((c, b), (oc, ob)) in enumerate(zip(body(net), body(official), strict=True)):
            if i == 0:
                c.weight.zero_()
                c.weight[:, :1].copy_(oc.weight[:, :1])
            else:
                c.weight.copy_(oc.weight)
            b.load_state_dict(ob.state_dict())
    return net


def _conv_bn_pairs(net: SonoNet) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(conv, batch norm) pairs in forward order: the order of the Lasagne parameters."""
    mods = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
    pairs = []
    for a, b in zip(mods[0::2], mods[1::2], strict=True):
        assert isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d)
        pairs.append((a, b))
    return pairs


def preprocess_official(rgb: np.ndarray, crop: tuple[int, int, int, int] | None = OFFICIAL_CROP,
                        size: tuple[int, int] = OFFICIAL_SIZE) -> torch.Tensor:
    """The release's preprocessing of one frame: crop ``(r0, r1, c0, c1)``, bilinear resize to
    ``size`` = (height, width), average the colour channels to grey, then per-image zero mean
    and unit std times 255. Takes a uint8 HxW or HxWx3 array; returns (1, H, W) float32."""
    from PIL import Image

    arr = np.asarray(rgb)
    if crop is not None:
        r0, r1, c0, c1 = crop
        arr = arr[r0:r1, c0:c1]
    img = Image.fromarray(arr).resize((size[1], size[0]), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., :3].mean(axis=2)
    t = torch.from_numpy(x)[None, None]
    return standardize(t)[0]


BRAIN_CLASSES = ("Brain (Cb.)", "Brain (Tv.)")


class BrainPlaneJudge(nn.Module):
    """The official SonoNet-16 as an independent judge of real head frames: for (B,1,H,W) in
    [-1, 1], the probability of a brain standard plane (softmax mass on Brain (Cb.) + Brain (Tv.))
    and the call (one of the two is the argmax).

    Each frame is prepared as :func:`preprocess_official` does for a file (grey levels quantised
    to uint8 as a PNG holds them, bilinear resize to 224x288, per-image standardisation inside
    the network); HC18 frames carry no vendor text, so there is no crop.
    """

    def __init__(self, net: SonoNet):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.brain = [OFFICIAL_CLASSES.index(c) for c in BRAIN_CLASSES]

    @classmethod
    def from_official(cls, path: str | os.PathLike) -> BrainPlaneJudge:
        return cls(SonoNet.from_official(path))

    def train(self, mode: bool = True):  # always in eval mode (batch-norm statistics)
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        grey = torch.round((x.float().clamp(-1, 1) + 1) * 127.5)  # what the frame's PNG holds
        grey = F.interpolate(grey, size=OFFICIAL_SIZE, mode="bilinear", align_corners=False)
        logits = self.net(grey).float()
        prob = logits.softmax(1)
        p_brain = prob[:, self.brain].sum(1)
        call = torch.isin(logits.argmax(1), torch.tensor(self.brain, device=logits.device))
        return {"p_brain": p_brain, "brain": call}
