"""The standard-plane guide of Diff-ICE: f(x) = l(s(x), x) (paper, Sec. 3.2).

``s`` is a frozen segmentation network (:mod:`diffice.nets.segmenter`); ``l`` is a
SonoNet-16-style predictor that reads the image and the K segmentation probability maps as
K + 1 input channels and gives ONE logit for "standard plane" (label 1).

The guidance gradient ∇_x L_c(f(x̂0), y) (paper, Eq. 4) reaches the image through l and, when
``grad_through_segmenter`` is on (default), through s as well; off, the probabilities are
detached and only l's direct path from the image channel carries the gradient.

Intensities: x is (B, 1, H, W) in [-1, 1]. A guide whose l starts from the authors' SonoNet-16
(``standardize_image``; :func:`diffice.nets.sononet.transfer_official`) standardises the image
channel per frame as the release does (zero mean, unit std, times 255) before l reads it; with
``raw_channel`` l also reads the frame as it is (a channel that starts at zero), so that a change of
the overall gain, which the standardisation removes, stays visible.

The guide calls a frame SP when sigma(f(x)) > ``threshold`` (a buffer saved with the checkpoint:
0.5, or the training and validation frames' balanced-accuracy threshold when the guide was
trained with ``guide.calibrate``; checkpoints from before it existed load with 0.5). Every decision made with
the guide — a counterfactual is "flipped", the inputs it calls NSP — uses it
(:func:`decision_threshold`).
"""

from __future__ import annotations

import torch
from torch import nn

from diffice.nets.sononet import SonoNet, standardize


class Guide(nn.Module):
    """``guide(x) -> (B,)`` SP logit; ``guide.segment(x) -> (B, K, H, W)`` probabilities."""

    def __init__(self, segmenter: nn.Module, num_classes: int, sononet: int = 16,
                 grad_through_segmenter: bool = True, standardize_image: bool = False, raw_channel: bool = False):
        super().__init__()
        self.segmenter = segmenter
        self.num_classes = num_classes
        self.grad_through_segmenter = grad_through_segmenter
        self.standardize_image = standardize_image
        self.raw_channel = raw_channel
        channels = 1 + int(raw_channel) + num_classes
        self.predictor = SonoNet(features=sononet, in_channels=channels, num_classes=1, final_bn=False)
        self.register_buffer("threshold", torch.tensor(0.5))
        self.freeze_segmenter()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint from before the decision threshold was saved decides at 0.5
        state_dict.setdefault(prefix + "threshold", torch.tensor(0.5))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def freeze_segmenter(self) -> None:
        """s is trained separately and never updated here: no parameter gradients, eval mode."""
        for p in self.segmenter.parameters():
            p.requires_grad_(False)
        self.segmenter.eval()

    def train(self, mode: bool = True) -> Guide:
        super().train(mode)
        self.segmenter.eval()  # batch norm statistics of s stay frozen
        return self

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation probabilities s(x), softmax over K classes."""
        return self.segmenter(x).softmax(dim=1)

    def predictor_input(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.segment(x)
        if not self.grad_through_segmenter:
            probs = probs.detach()
        first = [standardize(x), x] if self.raw_channel else [standardize(x) if self.standardize_image else x]
        return torch.cat([*first, probs], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.predictor_input(x)).squeeze(1)

    def evidence(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W): l's SP logit map before its global average (one value per cell of the last
        stage), bilinearly upsampled to the frame, less the decision logit: below 0 where the guide
        sees the frame as non-standard. Its mean over the cells, plus that logit, is ``forward``."""
        cells = self.predictor.class_maps(self.predictor_input(x)).float()
        up = torch.nn.functional.interpolate(cells, size=x.shape[-2:], mode="bilinear", align_corners=False)
        t = decision_threshold(self)
        return up - float(torch.logit(torch.tensor(t).clamp(1e-6, 1 - 1e-6)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled stage-5 features of l (B, 8F): SonoNet features when no official weights exist."""
        return self.predictor.features(self.predictor_input(x))


def decision_threshold(guide) -> float:
    """The SP probability above which ``guide`` calls a frame SP (0.5 for a network without one)."""
    t = getattr(guide, "threshold", None)
    return float(t) if isinstance(t, torch.Tensor) else 0.5
