"""The oracle: a Progressive Concept Bottleneck Model (PCBM; Lin et al., arXiv:2211.10630),
the independent judge of Diff-ICE's counterfactuals (paper, Sec. 4: QS_O, MQD).

Progression: image -> segmentation -> per-structure concept scores -> overall quality::

    s(x)        its OWN U-Net (encoder ``cfg.oracle.encoder``; shares no weight with the guide)
    phi_k(x)    decoder features averaged under each class's probability map p_k, plus p_k's
                area, plus the globally pooled deepest encoder features
    c(x)        = sigmoid(W_c phi(x) + b_c)               one score per concept (qs_th, ...)
    QS_O(x)     = sigmoid(g (softmin_tau(c(x)) - t))        g, tau > 0: monotone in every concept

QS_O is non-decreasing in each concept score, so a better structure never lowers the overall
quality; the learnt temperature tau moves it between "every structure must be good"
(min) and "the average structure" (mean). Its training target is defined in :mod:`diffice.modules.oracle`.

Intensities: x is (B, 1, H, W) in [-1, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffice.nets.segmenter import SEGMENTERS


class PCBM(nn.Module):
    """``oracle(x) -> dict(concepts=(B,C) in [0,1], qs_o=(B,) in [0,1], concept_logits,
    qs_logit, seg_logits=(B,K,H,W))``."""

    def __init__(self, encoder: str, num_classes: int, concepts: list[str], arch: str = "unet",
                 decoder_channels: list[int] | None = None):
        super().__init__()
        self.concept_names = list(concepts)
        self.num_classes = num_classes
        self.segmenter = SEGMENTERS[arch](encoder, 1, num_classes, decoder_channels=decoder_channels)
        net = self.segmenter.net
        dec_ch = net.segmentation_head[0].in_channels
        enc_ch = net.encoder.out_channels[-1]
        feat_dim = num_classes * dec_ch + num_classes + enc_ch
        c = max(1, len(self.concept_names))
        self.concept_head = nn.Sequential(nn.LayerNorm(feat_dim), nn.Linear(feat_dim, c))
        # monotone overall-quality head on the concept scores: a soft minimum of the concepts
        # (temperature tau) compared with a threshold t, scaled by a positive gain g
        self.qs_log_tau = nn.Parameter(torch.tensor(-2.0))    # tau = softplus(.) ~ 0.13
        self.qs_threshold = nn.Parameter(torch.tensor(0.5))
        self.qs_log_gain = nn.Parameter(torch.tensor(10.0))   # g = softplus(.) ~ 10

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled deepest encoder features (B, D) of the oracle's own backbone: an
        ultrasound network that shares no weight with the guide (FSD / SonoSim by default)."""
        seg = self.segmenter
        return seg.net.encoder(seg.pad(x))[-1].mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        seg = self.segmenter
        h, w = x.shape[-2:]
        xp = seg.pad(x)
        feats = seg.net.encoder(xp)
        dec = seg.net.decoder(feats)
        seg_logits_full = seg.net.segmentation_head(dec)
        probs = seg_logits_full.softmax(dim=1)
        # pool decoder features under each class's probability map (over the un-padded frame)
        dec_c = dec[..., :h, :w]
        pr = probs[..., :h, :w]
        area = pr.mean(dim=(2, 3))  # (B, K)
        pooled = torch.einsum("bkhw,bdhw->bkd", pr, dec_c) / (pr.sum(dim=(2, 3)).unsqueeze(-1) + 1.0)
        glob = feats[-1].mean(dim=(2, 3))
        phi = torch.cat([pooled.flatten(1), area, glob], dim=1)
        # row by row: a (B, F) x (F, C) product with few concepts gives odd and even rows other last
        # bits on the CPU (MKL), so a frame's scores would depend on its place in the batch
        concept_logits = torch.cat([self.concept_head(phi[i : i + 1]) for i in range(phi.shape[0])])
        concepts = torch.sigmoid(concept_logits)
        qs_logit = self.quality_logit(concepts)
        return {
            "concepts": concepts,
            "concept_logits": concept_logits,
            "qs_o": torch.sigmoid(qs_logit),
            "qs_logit": qs_logit,
            "seg_logits": seg_logits_full[..., :h, :w],
        }

    def quality_logit(self, concepts: torch.Tensor) -> torch.Tensor:
        """logit QS_O = g * (softmin_tau(c) - t), softmin_tau(c) = -tau log mean_j exp(-c_j / tau).

        Non-decreasing in every concept; tau -> 0 gives min_j c_j (an SP needs every structure),
        large tau gives the mean of the concepts."""
        tau = F.softplus(self.qs_log_tau) + 1e-3
        m = -tau * (torch.logsumexp(-concepts / tau, dim=1) - math.log(concepts.shape[1]))
        return F.softplus(self.qs_log_gain) * (m - self.qs_threshold)

    def concepts_dict(self, concepts: torch.Tensor) -> list[dict[str, float]]:
        """Rows of a (B, C) concept tensor as {name: value} dicts (for record.json)."""
        return [dict(zip(self.concept_names, map(float, row), strict=False)) for row in concepts.detach().cpu()]
