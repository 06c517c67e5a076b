"""OracleModule (checkpoint kind "oracle"): trains the PCBM oracle (:mod:`diffice.nets.pcbm`).

Targets (batches per the data contract):

* concepts: the manifest's ``qs_*`` columns (``cfg.data.concepts``), floats in [0, 1]; NaN
  entries are left out of the loss. Loss: binary cross-entropy with soft targets.
* QS_O (``oracle.qs_target``): ``label`` (default) = the frame's SP label (1 SP, 0 NSP), so that
  QS_O is the oracle's SP confidence as in the paper (QS_O(x) < 0.5 = "classified as NSP");
  where the label is unknown (-1) the mean of the known concepts is used. ``mean`` = always the
  mean of the known concepts (the phantom's ``quality``). Loss: BCE with soft targets.
* segmentation (weight ``oracle.seg_weight``): Dice + CE on the masks, where present.

Validation reports per-concept MAE, the expected calibration error (ECE, 10 equal-width
bins of the prediction: sum_b n_b/N |mean prediction_b - mean target_b|) for each concept
and for QS_O, and logs a reliability diagram.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from diffice.errors import UserError
from diffice.metrics.classification import balanced_accuracy
from diffice.modules.common import DifficeModule, log_image
from diffice.nets.pcbm import PCBM
from diffice.nets.segmenter import dice_ce_loss

QS_TARGETS = ("label", "mean")


def qs_target(labels: torch.Tensor, concepts: torch.Tensor, mode: str) -> torch.Tensor:
    """(B,) QS_O training target, NaN where nothing is known (see the module docstring)."""
    known = ~torch.isnan(concepts)
    mean = torch.where(known, concepts, torch.zeros_like(concepts)).sum(1) / known.sum(1).clamp_min(1)
    mean = torch.where(known.any(1), mean, torch.full_like(mean, math.nan))
    if mode == "mean":
        return mean
    return torch.where(labels >= 0, labels.to(mean.dtype), mean)


def soft_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean BCE over entries whose target is not NaN (0 with a graph when none is)."""
    keep = ~torch.isnan(target)
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[keep], target[keep])


def calibration(pred: torch.Tensor, target: torch.Tensor, bins: int = 10) -> dict:
    """ECE and the reliability curve (per bin: mean prediction, mean target, count)."""
    keep = ~torch.isnan(target)
    p, t = pred[keep].double(), target[keep].double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    idx = torch.clamp(torch.bucketize(p, edges[1:-1]), 0, bins - 1)
    conf, acc, count = [], [], []
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        count.append(n)
        if n:
            conf.append(float(p[sel].mean()))
            acc.append(float(t[sel].mean()))
            ece += n / max(1, len(p)) * abs(conf[-1] - acc[-1])
        else:
            conf.append(math.nan)
            acc.append(math.nan)
    return {"ece": ece if len(p) else math.nan, "confidence": conf, "observed": acc, "count": count}


def reliability_image(curves: dict[str, dict], size: int = 150) -> np.ndarray:
    """One panel per curve: bars = mean target per prediction bin, diagonal = perfect calibration."""
    from PIL import Image, ImageDraw

    pad = 18
    w = len(curves) * (size + pad) + pad
    img = Image.new("RGB", (w, size + 2 * pad + 12), "white")
    d = ImageDraw.Draw(img)
    for k, (name, cur) in enumerate(curves.items()):
        x0, y0 = pad + k * (size + pad), pad
        d.rectangle([x0, y0, x0 + size, y0 + size], outline="black")
        d.line([x0, y0 + size, x0 + size, y0], fill=(180, 180, 180))
        bins = len(cur["observed"])
        bw = size / bins
        for b, v in enumerate(cur["observed"]):
            if math.isnan(v):
                continue
            top = y0 + size - v * size
            d.rectangle([x0 + b * bw + 1, top, x0 + (b + 1) * bw - 1, y0 + size], fill=(90, 130, 230))
        ece = cur["ece"]
        d.text((x0, y0 + size + 3), f"{name} ECE {ece:.3f}" if not math.isnan(ece) else f"{name} ECE n/a", fill="black")
    return np.asarray(img)


class OracleModule(DifficeModule):
    kind = "oracle"

    def __init__(self, cfg, *, load_pretrained: bool = True):
        super().__init__(cfg)
        cfg = self.cfg
        if cfg.oracle.qs_target not in QS_TARGETS:
            raise UserError(f"oracle.qs_target: '{cfg.oracle.qs_target}' is not one of {', '.join(QS_TARGETS)}")
        self.concepts = list(cfg.data.concepts)
        self.oracle = PCBM(cfg.oracle.encoder, len(cfg.data.classes), self.concepts,
                           decoder_channels=cfg.oracle.decoder_channels)
        self._val: list[dict[str, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.oracle(x)

    def on_fit_start(self) -> None:
        if not self.concepts:
            raise UserError("train-oracle: data.concepts is empty; the oracle needs concept columns (qs_*) in the data")

    def _losses(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.oracle(batch["image"])
        c_target = batch["concepts"].float()
        l_c = soft_bce(out["concept_logits"], c_target)
        l_q = soft_bce(out["qs_logit"], qs_target(batch["label"], c_target, self.cfg.oracle.qs_target))
        l_s, _ = dice_ce_loss(out["seg_logits"], batch["mask"])
        loss = l_c + l_q + self.cfg.oracle.seg_weight * l_s
        return loss, {"out": out, "concept": l_c, "qs": l_q, "seg": l_s}

    def training_step(self, batch, batch_idx):
        loss, parts = self._losses(batch)
        b = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        for k in ("concept", "qs", "seg"):
            self.log(f"train/loss_{k}", parts[k], batch_size=b)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch, batch_idx):
        loss, parts = self._losses(batch)
        self.log("val/loss", loss, batch_size=batch["image"].shape[0], sync_dist=True)
        out = parts["out"]
        self._val.append(
            {
                "concepts": out["concepts"].detach().float(),
                "qs_o": out["qs_o"].detach().float(),
                "c_target": batch["concepts"].detach().float(),
                "label": batch["label"].detach(),
                "index": batch["index"].detach(),
            }
        )

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        cat = {k: torch.cat([v[k] for v in self._val]) for k in self._val[0]}
        pooled = self.pool_frames({k: v for k, v in cat.items() if k != "index"}, cat["index"])  # every process's frames, once
        rep, curves = oracle_report({k: v.cpu() for k, v in pooled.items()}, self.concepts, self.cfg.oracle.qs_target)
        for k, v in rep.items():
            if not math.isnan(v):
                self.log(f"val/{k}", v)
        log_image(self, "val/reliability", reliability_image(curves), caption="mean target per prediction bin")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.oracle.parameters(), lr=self.cfg.oracle.lr, weight_decay=1e-4)


def oracle_report(v: dict[str, torch.Tensor], concepts: list[str], mode: str) -> tuple[dict[str, float], dict]:
    """Per-concept MAE and ECE, QS_O's ECE / MAE against its target; plus reliability curves."""
    rep: dict[str, float] = {}
    curves: dict[str, dict] = {}
    for j, name in enumerate(concepts):
        t = v["c_target"][:, j]
        keep = ~torch.isnan(t)
        rep[f"mae_{name}"] = float((v["concepts"][keep, j] - t[keep]).abs().mean()) if keep.any() else math.nan
        curves[name] = calibration(v["concepts"][:, j], t)
        rep[f"ece_{name}"] = curves[name]["ece"]
    maes = [rep[f"mae_{n}"] for n in concepts if not math.isnan(rep[f"mae_{n}"])]
    rep["mae_concepts"] = float(np.mean(maes)) if maes else math.nan
    qt = qs_target(v["label"], v["c_target"], mode)
    keep = ~torch.isnan(qt)
    rep["mae_qs_o"] = float((v["qs_o"][keep] - qt[keep]).abs().mean()) if keep.any() else math.nan
    curves["qs_o"] = calibration(v["qs_o"], qt)
    rep["ece_qs_o"] = curves["qs_o"]["ece"]
    lab = v["label"]
    if bool((lab >= 0).any()):
        k = lab >= 0
        rep["qs_o_balanced_accuracy"] = balanced_accuracy(lab[k], (v["qs_o"][k] >= 0.5).long())
    return rep, curves


@torch.no_grad()
def evaluate_oracle(oracle: PCBM, loader, concepts: list[str], mode: str = "label") -> tuple[dict[str, float], dict]:
    oracle.eval()
    device = next(oracle.parameters()).device
    rows: dict[str, list] = {"concepts": [], "qs_o": [], "c_target": [], "label": []}
    for batch in loader:
        out = oracle(batch["image"].to(device))
        rows["concepts"].append(out["concepts"].cpu())
        rows["qs_o"].append(out["qs_o"].cpu())
        rows["c_target"].append(batch["concepts"].float())
        rows["label"].append(batch["label"])
    return oracle_report({k: torch.cat(r) for k, r in rows.items()}, concepts, mode)
