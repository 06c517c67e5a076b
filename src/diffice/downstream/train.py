"""A timm classifier trained from scratch by a plain torch loop, and batched prediction.

* :func:`build_model` — ``timm.create_model(name, pretrained=False, in_chans=1, num_classes=K)``:
  weights are never downloaded. Networks with a patch embedding (ViT, DeiT, ...) get the frames'
  ``img_size`` and a patch that divides it (their own if it does, else 16, 8, 4 or 2);
  ``model_kwargs`` go to ``timm.create_model`` (``drop_rate``, ``drop_path_rate``, ``patch_size``,
  ...); ``scale`` > 1 puts a bilinear upsampling in front of the network (:class:`Upsampled`), so
  that it trains and predicts on larger inputs from the same frames.
* :func:`train_classifier` — AdamW, linear warm-up (``warmup``: a fraction of the steps) then
  cosine (or constant) learning rate, gradient clipping, optional label smoothing, light
  augmentation (a random shift of up to 1/16 of the frame, filled with black; a random gain and
  gamma; random horizontal flips only when ``flips``), batches drawn with replacement from a
  ``torch.Generator`` with optional per-frame sampling weights (``balanced=True``: class-balanced).
  Given the seed (and the device and thread count) the trained weights are the same every time.
* :func:`predict` — softmax probabilities (N, K) in eval mode, batched, without gradients.

Frames enter the networks as (B, 1, H, W) float in [-1, 1] (uint8 / 127.5 - 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffice.errors import UserError

SHIFT_FRACTION = 1 / 16  # largest random shift, as a fraction of the frame's smaller side
GAIN = (0.85, 1.15)  # random gain of the [0, 1] intensities
GAMMA = (0.8, 1.25)  # random gamma (keeps black black)
WARMUP_FRACTION = 0.05  # linear warm-up over this fraction of the steps


def resolve_device(name: str | torch.device | None) -> torch.device:
    """'auto' (or None): CUDA when available, else CPU; 'gpu' means 'cuda'."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "gpu":
        name = "cuda"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name}: no CUDA device is available (use cpu)")
    return torch.device(name)


def fabric(device: str | torch.device | None, precision: str = "32-true"):
    """Lightning Fabric on ``device`` (:func:`resolve_device`) at ``precision`` (a ``trainer.precision``
    value) for the downstream loops: they keep their own seeded draws and schedule; Fabric places the
    model, autocasts and scales. The studies train at the default, float32."""
    from lightning.fabric import Fabric

    dev = resolve_device(device)
    return Fabric(accelerator=dev.type, devices=[dev.index or 0] if dev.type == "cuda" else 1, precision=precision)


def fabric_step(fab, model, opt, sched, loss: torch.Tensor, grad_clip: float, *, step: int, who: str, lr_key: str,
                on_step: Callable[[int], None] | None) -> None:
    """Optimizer step ``step`` (0-based) of a downstream loop: a non-finite ``loss`` is one line naming ``who``
    and ``lr_key``; then backward, gradient-norm clip (``grad_clip`` > 0), step, schedule, ``on_step(step + 1)``."""
    if not torch.isfinite(loss):
        raise UserError(f"{who}: the training loss became {float(loss)} at step {step + 1}; lower {lr_key}")
    opt.zero_grad(set_to_none=True)
    fab.backward(loss)
    if grad_clip:
        fab.clip_gradients(model, opt, max_norm=float(grad_clip), error_if_nonfinite=False)
    opt.step()
    sched.step()
    if on_step is not None:
        on_step(step + 1)


def _patch_size(default: int, size: Sequence[int]) -> int:
    h, w = int(size[0]), int(size[1])
    for p in (default, 16, 8, 4, 2, 1):
        if p and h % p == 0 and w % p == 0:
            return p
    return 1


class Upsampled(nn.Module):
    """``net`` fed with its input bilinearly upsampled by ``scale`` (a stride-32 stem at 64x80
    leaves a 2x3 map; at scale 2 it is 4x5)."""

    def __init__(self, net: nn.Module, scale: float):
        super().__init__()
        self.net, self.scale = net, float(scale)
        self.num_classes = getattr(net, "num_classes", 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.net(x)


def build_model(name: str, num_classes: int, image_size: Sequence[int], *, scale: float = 1.0,
                model_kwargs: dict | None = None) -> nn.Module:
    """A timm network for 1-channel frames of ``image_size`` = (H, W) with ``num_classes`` logits,
    randomly initialised (``pretrained=False``: nothing is downloaded); ``model_kwargs`` are passed
    to ``timm.create_model``; ``scale`` != 1: the network sees the frames upsampled by it."""
    import timm

    if not timm.is_model(name):
        raise UserError(f"downstream.models: '{name}' is not a timm model (see timm.list_models())")
    kw = dict(model_kwargs or {})
    scale = float(scale)
    size = (int(image_size[0]), int(image_size[1]))
    net_size = (round(size[0] * scale), round(size[1] * scale))
    try:
        model = timm.create_model(name, pretrained=False, in_chans=1, num_classes=int(num_classes), **kw)
        embed = getattr(model, "patch_embed", None)
        if embed is not None:  # ViT-like: the frame size is built into the position embedding
            ps = kw.pop("patch_size", None) or getattr(embed, "patch_size", (16, 16))
            ps = int(ps[0] if isinstance(ps, tuple | list) else ps)
            model = timm.create_model(name, pretrained=False, in_chans=1, num_classes=int(num_classes),
                                      img_size=net_size, patch_size=_patch_size(ps, net_size), **kw)
    except (RuntimeError, TypeError, ValueError, AssertionError) as err:
        raise UserError(f"downstream.models: timm could not build '{name}' for 1-channel {net_size[0]}x{net_size[1]} "
                        f"frames ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from err
    return model if scale == 1.0 else Upsampled(model, scale)


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) -> float (B, 1, H, W) in [-1, 1]."""
    return images.float().unsqueeze(1) / 127.5 - 1.0


def augment(x: torch.Tensor, gen: torch.Generator, flips: bool = False) -> torch.Tensor:
    """Random shift (filled with black) and gain / gamma of a batch in [-1, 1], and a horizontal
    flip of half the frames when ``flips``; the random numbers come from ``gen`` (on the CPU), so a
    batch's augmentation does not depend on the device (without flips the draws are those of
    earlier versions)."""
    b, _, h, w = x.shape
    m = max(1, round(min(h, w) * SHIFT_FRACTION))
    shift = torch.randint(-m, m + 1, (b, 2), generator=gen)
    gain = torch.empty(b).uniform_(*GAIN, generator=gen)
    gamma = torch.exp(torch.empty(b).uniform_(math.log(GAMMA[0]), math.log(GAMMA[1]), generator=gen))
    dev = x.device
    shift, gain, gamma = shift.to(dev), gain.to(dev), gamma.to(dev)
    padded = F.pad(x, (m, m, m, m), value=-1.0)
    rows = torch.arange(h, device=dev)[None, :] + (m - shift[:, :1])  # (B, H)
    cols = torch.arange(w, device=dev)[None, :] + (m - shift[:, 1:])  # (B, W)
    bi = torch.arange(b, device=dev)[:, None, None]
    x = padded[bi, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)
    x01 = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
    x01 = (gain[:, None, None, None] * x01.pow(gamma[:, None, None, None])).clamp(0.0, 1.0)
    x = x01 * 2.0 - 1.0
    if flips:
        flip = (torch.rand(b, generator=gen) < 0.5).to(dev)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-frame sampling weights giving every class the same share of the batches."""
    labels = np.asarray(labels)
    values, counts = np.unique(labels, return_counts=True)
    per = dict(zip(values.tolist(), (1.0 / counts).tolist()))
    return np.array([per[v] for v in labels.tolist()], dtype=np.float64)


def lr_factor(step: int, steps: int, schedule: str, warmup: float = WARMUP_FRACTION) -> float:
    """Multiplier of the learning rate at ``step`` (0-based): linear warm-up over ``warmup`` of the
    steps, then cosine or constant."""
    warm = max(1, round(steps * float(warmup)))
    if step < warm:
        return (step + 1) / warm
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise UserError(f"downstream.schedule: '{schedule}' is not cosine or constant")
    t = (step - warm) / max(1, steps - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _as_uint8_tensor(images) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        t = images.detach().cpu()
    else:
        t = torch.from_numpy(np.ascontiguousarray(images))
    if t.dtype != torch.uint8 or t.ndim != 3:
        raise ValueError(f"images must be uint8 (N, H, W), got {t.dtype} {tuple(t.shape)}")
    return t


def weights_tensor(sample_weights, n: int, who: str) -> torch.Tensor | None:
    """``sample_weights`` (one per frame) as float64, checked; None for uniform draws."""
    if sample_weights is None:
        return None
    weights = torch.as_tensor(np.asarray(sample_weights), dtype=torch.float64)
    if len(weights) != n or not torch.isfinite(weights).all() or float(weights.sum()) <= 0:
        raise ValueError(f"{who}: sample_weights must be finite, non-negative, one per frame, not all 0")
    return weights


def draw_indices(n: int, bs: int, weights: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
    """One step's ``bs`` frame indices from ``gen``: uniform, or by ``weights`` with replacement."""
    if weights is None:
        return torch.randint(n, (bs,), generator=gen)
    return torch.multinomial(weights, bs, replacement=True, generator=gen)


def train_classifier(
    model_name: str,
    images,
    labels,
    num_classes: int,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: str | torch.device = "auto",
    image_size: Sequence[int] | None = None,
    weight_decay: float = 0.05,
    schedule: str = "cosine",
    augment_frames: bool = True,
    balanced: bool = False,
    sample_weights: np.ndarray | None = None,
    grad_clip: float = 1.0,
    warmup: float = WARMUP_FRACTION,
    flips: bool = False,
    label_smoothing: float = 0.0,
    scale: float = 1.0,
    model_kwargs: dict | None = None,
    precision: str = "32-true",
    on_step: Callable[[int], None] | None = None,
) -> nn.Module:
    """Train ``model_name`` from scratch on uint8 frames (N, H, W) with int labels in [0, K).

    Returns the trained network in eval mode on ``device``. ``sample_weights`` (per frame) set how
    often each frame is drawn; ``balanced`` (when no weights are given) draws every class equally.
    ``warmup``: the warm-up's fraction of the steps; ``flips``: random horizontal flips (with
    ``augment_frames``); ``scale`` / ``model_kwargs``: see :func:`build_model`; ``precision``: :func:`fabric`.
    ``on_step(k)`` is called after optimizer step k (1-based).
    """
    imgs = _as_uint8_tensor(images)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
    n = len(imgs)
    if n == 0 or len(y) != n:
        raise ValueError(f"train_classifier: {n} frames and {len(y)} labels")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"train_classifier: labels must lie in [0, {num_classes})")
    if image_size is not None and tuple(imgs.shape[1:]) != (int(image_size[0]), int(image_size[1])):
        from diffice.downstream.frames import resize_frames

        imgs = torch.from_numpy(resize_frames(imgs.numpy(), image_size))
    size = tuple(imgs.shape[1:])
    fab = fabric(device, precision)
    if sample_weights is None and balanced:
        sample_weights = class_balanced_weights(y.numpy())
    weights = weights_tensor(sample_weights, n, "train_classifier")

    torch.manual_seed(int(seed))  # the initial weights (and dropout) follow the seed
    gen = torch.Generator().manual_seed(int(seed))  # batches and augmentation
    model = build_model(model_name, num_classes, size, scale=scale, model_kwargs=model_kwargs)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=float(lr), weight_decay=float(weight_decay))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, int(steps), schedule, warmup))
    run, opt_f = fab.setup(model, opt)
    imgs_dev, y_dev = fab.to_device(imgs), fab.to_device(y)
    bs = int(batch_size)
    for step in range(int(steps)):
        idx = fab.to_device(draw_indices(n, bs, weights, gen))
        x = to_input(imgs_dev[idx])
        if augment_frames:
            x = augment(x, gen, flips)
        loss = F.cross_entropy(run(x), y_dev[idx], label_smoothing=float(label_smoothing))
        fabric_step(fab, run, opt_f, sched, loss, grad_clip, step=step, who=model_name, lr_key=f"downstream.lr ({lr})",
                    on_step=on_step)
    model.eval()
    return model


@torch.no_grad()
def predict(model: nn.Module, images, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities (N, K) as float64, in eval mode, batched, without gradients."""
    imgs = _as_uint8_tensor(images)
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for start in range(0, len(imgs), int(batch_size)):
        x = to_input(imgs[start:start + int(batch_size)].to(dev))
        out.append(torch.softmax(model(x).float(), dim=1).double().cpu())
    model.train(was_training)
    if not out:
        k = getattr(model, "num_classes", 0)
        return np.zeros((0, k), np.float64)
    return torch.cat(out).numpy()
