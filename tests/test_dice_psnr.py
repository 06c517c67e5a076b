"""The one Dice (nets.dice) and the one PSNR (metrics.psnr): their conventions, and that they give the
numbers the helpers they replaced gave."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffice.metrics.psnr import PSNR_CAP, psnr
from diffice.nets.dice import DiceCounter, dice, dice_counts, dice_or_none


def _maps(seed: int, shape=(3, 12, 10), k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, k, shape, generator=g), torch.randint(-1, k, shape, generator=g)


def test_dice_known_answers_and_empty_against_empty():
    a = torch.zeros(1, 4, 4, dtype=torch.long)
    a[0, :2] = 1  # 8 head pixels
    b = a.clone()
    b[0, 1] = 0   # 4 of them kept
    d = dice(a, b, 3)[0]
    assert d[1] == pytest.approx(2 * 4 / (8 + 4)) and d[0] == pytest.approx(2 * 8 / (8 + 12))
    assert math.isnan(d[2]) and dice_or_none(d[2]) is None  # in neither map: no Dice, not 1.0
    assert dice(a.numpy(), b.numpy(), 3)[0, 1] == d[1]  # arrays as tensors
    assert dice(a, a, 2)[0].tolist() == [1.0, 1.0]


def test_dice_matches_the_helpers_it_replaced():
    a, b = _maps(0)
    known = b >= 0
    got = dice(a, b, 4, valid=known)
    for i in range(a.shape[0]):
        for c in range(4):
            # synthesis.sampler (float32, over known pixels) and modules.counterfactual (numpy, per frame)
            p, g = (a[i] == c) & known[i], (b[i] == c) & known[i]
            inter, denom = (p & g).sum().float(), (p.sum() + g.sum()).float()
            old32 = (2 * inter / denom.clamp(min=1)) if denom > 0 else torch.tensor(math.nan)
            assert torch.equal(got[i, c].float(), old32) or (math.isnan(old32) and math.isnan(got[i, c]))
            pa, pb = a[i].numpy() == c, b[i].numpy() == c
            total = int(pa.sum() + pb.sum())
            old = float(2 * (pa & pb).sum() / total) if total else None
            assert dice_or_none(dice(a[i], b[i], 4)[c]) == old
    # metrics.biometry's head Dice: every non-background class against the same
    pa, pb = a[0].numpy() > 0, b[0].numpy() > 0
    assert float(dice(pa, pb, 2)[1]) == float(2 * (pa & pb).sum() / int(pa.sum() + pb.sum()))


def test_dice_counter_pools_frames_and_keeps_their_counts():
    a, b = _maps(1)
    counter = DiceCounter(4)
    counter.update(a[:2], b[:2], valid=b[:2] >= 0)
    counter.update(a[2:], b[2:], valid=b[2:] >= 0)
    inter2, total = dice_counts(a, b, 4, valid=b >= 0)
    assert torch.equal(counter.compute(), inter2.sum(0) / total.sum(0))
    assert len(counter.frames) == 3 and np.array_equal(counter.frames[2][1], total[2].numpy())
    empty = DiceCounter(2)
    empty.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    assert empty.compute()[0] == 1.0 and math.isnan(empty.compute()[1])


def test_psnr_known_answer_cap_and_empty_region():
    x = torch.zeros(3, 1, 4, 4)
    y = x.clone()
    y[1] += 0.2  # mse 0.04 -> 10 log10(4 / 0.04) = 20 dB
    y[2] += 1e-4  # far below a grey level: above the cap, so at it
    assert psnr(x, y) == [PSNR_CAP, pytest.approx(20.0), PSNR_CAP]
    where = torch.zeros(3, 4, 4, dtype=torch.bool)
    where[1, 0, 0] = True
    out = psnr(x, y, where)
    assert math.isnan(out[0]) and out[1] == pytest.approx(20.0) and math.isnan(out[2])  # nothing to compare: NaN
    # grey levels in [0, 1] with peak 1 give the same number (synthesis measured it so)
    mse01 = float((((y[1] + 1) / 2 - (x[1] + 1) / 2) ** 2).mean())
    assert psnr(x, y)[1] == pytest.approx(10 * math.log10(1 / mse01), abs=1e-5)


def test_psnr_equals_the_locality_formula_bit_for_bit():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 1, 16, 20, generator=g, dtype=torch.float64) * 2 - 1
    cf = x + 0.05 * torch.randn(1, 1, 16, 20, generator=g, dtype=torch.float64)
    outside = torch.rand(1, 1, 16, 20, generator=g) > 0.3
    mse = float(((cf - x) ** 2)[outside].mean())
    assert psnr(x, cf, outside)[0] == min(PSNR_CAP, 10 * math.log10(4.0 / mse))
