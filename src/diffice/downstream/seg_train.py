"""The head segmenter of the head-measurement study: a seeded torch loop, its masks, its measurements.

* :func:`train_segmenter` — the project's segmenter (:func:`diffice.nets.segmenter.build_segmenter`:
  ``segmenter.arch``, ``encoder``, ``decoder_channels``; ``encoder_weights`` only when set, nothing
  is downloaded) from its random initialisation (``torch.manual_seed(seed)``), trained with the
  segmenter's loss (cross-entropy + soft Dice, pixels of class -1 ignored:
  :func:`~diffice.nets.segmenter.dice_ce_loss`), AdamW (weight decay 1e-4, the segmenter's), a
  linear warm-up over 5 % of the steps then cosine learning rate
  (:func:`diffice.downstream.train.lr_factor`), gradients clipped at norm 1. Each step draws
  ``batch_size`` frames with replacement from a ``torch.Generator`` (per-frame weights), and with
  ``augment`` every drawn frame goes through the ``data.augment`` transforms
  (:mod:`diffice.data.transforms`: horizontal flip, small shift / scale / rotation, mild brightness
  and contrast; image and mask together), seeded from the same generator. Given the seed (and the
  device and thread count) the trained weights are the same every time.
* :func:`predict_masks` — argmax class maps, batched, in eval mode, without gradients.
* :func:`head_measures` — per frame: head Dice against the annotation
  (:func:`diffice.metrics.biometry.head_dice`), HC of the ellipse fitted to the segmented head
  (:func:`diffice.metrics.biometry.head_circumference`, at the frame's pixel spacing) and its
  absolute difference from the annotated HC. A frame where the segmenter finds no head (fewer than
  ``metrics.biometry.MIN_PIXELS`` pixels) is measured as 0 mm: its error is the annotated HC itself,
  so both arms are scored on every test frame.

Frames enter the network as (B, 1, H, W) float in [-1, 1] (uint8 / 127.5 - 1), as everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from diffice.downstream.train import WARMUP_FRACTION, draw_indices, weights_tensor

GRAD_CLIP = 1.0  # gradient norm clipping (trainer.gradient_clip_val's default)
WEIGHT_DECAY = 1e-4  # AdamW weight decay (the segmenter's, modules/segmenter.py)


def _batch(images: np.ndarray, masks: np.ndarray, idx: np.ndarray, seeds: np.ndarray | None, tf) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames ``idx`` as (B, 1, H, W) in [-1, 1] and (B, H, W) int64 masks, each augmented by ``tf``
    with its own seed (no augmentation when ``seeds`` is None)."""
    from diffice.data.transforms import apply_transform, to_model_range

    if seeds is None:
        x = images[idx].astype(np.float32) / 127.5 - 1.0
        return torch.from_numpy(x)[:, None], torch.from_numpy(masks[idx].astype(np.int64))
    xs, ys = [], []
    for i, s in zip(idx.tolist(), seeds.tolist()):
        img = images[i].astype(np.float32) / 255.0
        img, mask, _ = apply_transform(tf, img, masks[i].astype(np.int64), img, seed=int(s))
        xs.append(to_model_range(img))
        ys.append(mask)
    return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys))


def train_segmenter(cfg, num_classes: int, images: np.ndarray, masks: np.ndarray, *, steps: int, batch_size: int,
                    lr: float, seed: int, device: str | torch.device = "cpu", weight_decay: float = WEIGHT_DECAY,
                    warmup: float = WARMUP_FRACTION, augment: bool = True, sample_weights: np.ndarray | None = None,
                    precision: str = "32-true", on_step: Callable[[int], None] | None = None) -> nn.Module:
    """Train ``cfg.segmenter``'s network on uint8 frames (N, H, W) and their class maps (N, H, W)
    (-1 = unknown); returns it in eval mode on ``device``. ``sample_weights``: how often each frame
    is drawn (None: uniformly); ``precision``: :func:`diffice.downstream.train.fabric`; ``on_step(k)``
    after optimizer step k (1-based)."""
    from diffice.data.transforms import build_transform
    from diffice.downstream.train import fabric, fabric_step, lr_factor
    from diffice.nets.segmenter import build_segmenter, dice_ce_loss

    images, masks = np.asarray(images), np.asarray(masks)
    n = len(images)
    if n == 0 or images.dtype != np.uint8 or images.ndim != 3 or masks.shape != images.shape:
        raise ValueError(f"train_segmenter: uint8 frames (N, H, W) and masks of their shape, got {images.dtype} "
                         f"{images.shape} and {masks.shape}")
    weights = weights_tensor(sample_weights, n, "train_segmenter")
    fab = fabric(device, precision)
    torch.manual_seed(int(seed))  # the initial weights follow the seed
    gen = torch.Generator().manual_seed(int(seed))  # batches and augmentation
    net = build_segmenter(cfg, int(num_classes))
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=float(lr), weight_decay=float(weight_decay))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, int(steps), "cosine", float(warmup)))
    run, opt_f = fab.setup(net, opt)
    tf = build_transform(list(images.shape[1:]), True) if augment else None
    bs = int(batch_size)
    for step in range(int(steps)):
        idx = draw_indices(n, bs, weights, gen)
        seeds = torch.randint(0, 2**31 - 1, (bs,), generator=gen).numpy() if augment else None
        x, y = _batch(images, masks, idx.numpy(), seeds, tf)
        loss, _ = dice_ce_loss(run(fab.to_device(x)), fab.to_device(y))
        fabric_step(fab, run, opt_f, sched, loss, GRAD_CLIP, step=step, who="segmenter", lr_key=f"seg_downstream.lr ({lr})",
                    on_step=on_step)
    return net.eval()


@torch.no_grad()
def predict_masks(net: nn.Module, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Class maps int64 (N, H, W) of uint8 frames (N, H, W): the argmax of the logits, in eval mode."""
    net.eval()
    dev = next(net.parameters()).device
    out = []
    for start in range(0, len(images), int(batch_size)):
        x = torch.from_numpy(np.asarray(images[start:start + int(batch_size)], np.float32) / 127.5 - 1.0)[:, None]
        out.append(net(x.to(dev)).argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *np.asarray(images).shape[1:]), np.int64)


def head_measures(pred: np.ndarray, truth: np.ndarray, pixel_mm: np.ndarray, hc_annotated: np.ndarray) -> list[dict]:
    """Per frame: ``dice`` (head region against the annotation), ``hc_mm`` (NaN: no head found),
    ``head_found`` (0 / 1), ``hc_abs_mm`` = |HC − annotated HC| (the annotated HC when no head was found).

    ``pixel_mm`` (N, 2): (row, col) spacing in mm at the frames' size; ``hc_annotated`` (N,) in mm."""
    from diffice.metrics.biometry import head_circumference, head_dice

    rows = []
    for p, t, px, ref in zip(pred, truth, np.asarray(pixel_mm, np.float64), np.asarray(hc_annotated, np.float64)):
        d = head_dice(p, t)
        hc = head_circumference(p, (float(px[0]), float(px[1])))
        found = math.isfinite(hc)
        rows.append({"dice": math.nan if d is None else d, "hc_mm": hc, "head_found": int(found),
                     "hc_abs_mm": abs(hc - float(ref)) if found else float(ref)})
    return rows
