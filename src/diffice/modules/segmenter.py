"""SegmenterModule (checkpoint kind "segmenter"): trains ``build_segmenter`` with Dice + CE
on the data set's masks and logs per-class Dice and colour overlays.

Batches follow the data contract: ``image`` (B,1,H,W) in [-1,1], ``mask`` (B,H,W) int64
with -1 where unknown (frames without a mask contribute no loss).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from diffice.io import make_grid, overlay, to_uint8
from diffice.modules.common import DifficeModule, log_image
from diffice.nets.dice import DiceCounter, dice_counts
from diffice.nets.segmenter import build_segmenter, dice_ce_loss


def overlay_grid(images: torch.Tensor, rows: list[torch.Tensor]) -> np.ndarray:
    """Columns = frames; first row the frame, then one overlay row per class map tensor (B,H,W)."""
    grey = [to_uint8(im) for im in images]
    return make_grid([overlay(g, np.zeros(g.shape, np.int64)) for g in grey]
                     + [overlay(g, r[i].cpu().numpy()) for r in rows for i, g in enumerate(grey)], ncol=len(grey))


class SegmenterModule(DifficeModule):
    kind = "segmenter"

    def __init__(self, cfg, *, load_pretrained: bool = True):
        super().__init__(cfg)
        cfg = self.cfg
        self.classes = list(cfg.data.classes)
        self.net: nn.Module = build_segmenter(cfg, len(self.classes), load_pretrained=load_pretrained)
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        logits = self.net(batch["image"])
        loss, dice = dice_ce_loss(logits, batch["mask"])
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        self.log("train/soft_dice", dice[1:].mean() if dice.numel() > 1 else dice.mean(), batch_size=logits.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch, batch_idx):
        logits = self.net(batch["image"])
        loss, _ = dice_ce_loss(logits, batch["mask"])
        pred = logits.argmax(dim=1)
        inter2, total = dice_counts(pred, batch["mask"], len(self.classes), valid=batch["mask"] >= 0)
        self._val.append((inter2, total, batch["index"].detach()))
        self.log("val/loss", loss, batch_size=logits.shape[0], sync_dist=True)
        if batch_idx == 0:
            k = min(6, logits.shape[0])
            grid = overlay_grid(batch["image"][:k].cpu(), [batch["mask"][:k].cpu(), pred[:k].cpu()])
            log_image(self, "val/overlay", grid, caption="frame / truth / prediction")

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        # each frame's counts from every process, once: the pooled Dice one process would log, on every rank
        pooled = self.pool_frames({"inter2": torch.cat([a for a, _, _ in self._val]), "total": torch.cat([b for _, b, _ in self._val])},
                                  torch.cat([i for _, _, i in self._val]))
        counter = DiceCounter(len(self.classes))
        counter.frames = list(zip(pooled["inter2"].cpu().numpy(), pooled["total"].cpu().numpy(), strict=True))
        for name, value in dice_report(self.classes, counter.compute()).items():
            self.log(f"val/dice_{name}", value)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.net.parameters(), lr=self.cfg.segmenter.lr, weight_decay=1e-4)


def dice_report(classes: list[str], dice: torch.Tensor) -> dict[str, float]:
    """{class: Dice} for classes seen in prediction or truth, plus ``mean`` over foreground
    (each Dice rounded to float32, as the segmenter has always reported it)."""
    out = {c: float(d) for c, d in zip(classes, dice.float(), strict=True) if not math.isnan(float(d))}
    fg = [v for c, v in out.items() if c != classes[0]]
    if fg:
        out["mean"] = float(np.mean(fg))
    return out


@torch.no_grad()
def evaluate_segmenter(net: nn.Module, loader, classes: list[str]) -> dict[str, float]:
    """Hard Dice per class over a loader (frames without masks skipped)."""
    net.eval()
    counter = DiceCounter(len(classes))
    device = next(net.parameters()).device
    for batch in loader:
        pred = net(batch["image"].to(device)).argmax(dim=1).cpu()
        counter.update(pred, batch["mask"], valid=batch["mask"] >= 0)
    return dice_report(classes, counter.compute())
