"""Hard Dice of class maps, the one every Dice in diffice is: ``2 |A_c ∩ B_c| / (|A_c| + |B_c|)`` per
class c of two class maps (pixels outside ``valid`` in neither). A class in neither map has no Dice
(NaN; None in a record), never 1.0: a structure no frame shows is not a perfect match. Pooled over
frames (:class:`DiceCounter`): Σ 2|A∩B| / Σ (|A|+|B|). (The segmentation loss's soft Dice is
:func:`diffice.nets.segmenter.dice_ce_loss`.)
"""

from __future__ import annotations

import math

import numpy as np
import torch


def dice_counts(a, b, num_classes: int, valid=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(2|A∩B|, |A|+|B|)`` per class, float64 (..., C), over the last two axes of the class maps
    ``a`` and ``b`` (tensors or arrays); ``valid`` (bool, same shape) keeps only those pixels."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    keep = torch.ones_like(a, dtype=torch.bool) if valid is None else torch.as_tensor(valid).to(a.device)
    pairs = [((a == c) & keep, (b == c) & keep) for c in range(num_classes)]
    inter = torch.stack([(p & g).sum(dim=(-2, -1)) for p, g in pairs], -1)
    total = torch.stack([p.sum(dim=(-2, -1)) + g.sum(dim=(-2, -1)) for p, g in pairs], -1)
    return 2 * inter.double().cpu(), total.double().cpu()


def _ratio(inter2: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    return torch.where(total > 0, inter2 / total.clamp(min=1), torch.tensor(math.nan, dtype=torch.float64))


def dice(a, b, num_classes: int, valid=None) -> torch.Tensor:
    """Dice per class, float64 (..., C); NaN for a class in neither map."""
    return _ratio(*dice_counts(a, b, num_classes, valid))


def dice_or_none(value) -> float | None:
    """A Dice as a record value: None where it is undefined (NaN)."""
    return None if math.isnan(float(value)) else float(value)


class DiceCounter:
    """Pooled Dice per class over batches of (B, H, W) class maps; ``frames`` keeps each frame's
    ``(2|A∩B|, |A|+|B|)`` per class for a bootstrap interval."""

    def __init__(self, num_classes: int):
        self.k = num_classes
        self.frames: list[tuple[np.ndarray, np.ndarray]] = []

    def update(self, a, b, valid=None) -> None:
        inter2, total = dice_counts(a, b, self.k, valid)
        self.frames += list(zip(inter2.numpy(), total.numpy(), strict=True))

    def compute(self) -> torch.Tensor:
        """Per-class Dice, float64 (C,); NaN for a class in no frame."""
        if not self.frames:
            return torch.full((self.k,), math.nan, dtype=torch.float64)
        return _ratio(*(torch.from_numpy(np.sum([f[i] for f in self.frames], axis=0)) for i in (0, 1)))
