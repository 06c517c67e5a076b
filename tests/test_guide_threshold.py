"""The guide's decision threshold (issue 23): calibrated on the validation split, saved with the
guide, used by every decision made with it; old checkpoints and records decide at 0.5."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from diffice.modules.classifier import balanced_threshold, binary_report
from diffice.nets.guide import Guide, decision_threshold
from diffice.report.intervals import run_intervals
from diffice.report.records import guide_threshold


def test_balanced_threshold_separates_when_it_can_and_prefers_one_near_half():
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.6])
    y = np.array([0, 0, 0, 1, 1, 1])
    t = balanced_threshold(p, y)
    assert 0.2 < t < 0.3  # the only cut that gets all six right
    assert binary_report(torch.tensor(p), torch.tensor(y), t)["balanced_accuracy"] == 1.0
    assert binary_report(torch.tensor(p), torch.tensor(y))["balanced_accuracy"] == pytest.approx((1 / 3 + 1) / 2)
    # already separated at 0.5: 0.5 itself is kept (the tie nearest 0.5)
    assert balanced_threshold([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 0.5
    # a class missing, or unknown labels only: 0.5
    assert balanced_threshold([0.1, 0.7], [1, 1]) == 0.5
    assert balanced_threshold([0.1, 0.7, 0.3], [-1, -1, 0]) == 0.5


def test_guide_keeps_its_threshold_and_old_checkpoints_decide_at_half():
    seg = nn.Conv2d(1, 3, 1)
    g = Guide(seg, 3)
    assert decision_threshold(g) == 0.5
    g.threshold.fill_(0.3)
    state = g.state_dict()
    h = Guide(nn.Conv2d(1, 3, 1), 3)
    h.load_state_dict(state)
    assert decision_threshold(h) == pytest.approx(0.3)
    old = {k: v for k, v in state.items() if k != "threshold"}  # a guide saved before the threshold existed
    h.load_state_dict(old)
    assert decision_threshold(h) == 0.5
    assert decision_threshold(lambda x: x) == 0.5  # a bare function (tests, benchmarks)


def test_flip_ratio_uses_the_runs_threshold():
    def rec(p_in, p_cf, t=None):
        r = {"p_input": p_in, "p_cf": p_cf, "qs_input": 0.2, "qs_cf": 0.4, "flipped": p_cf > (0.5 if t is None else t)}
        return r if t is None else {**r, "guide_threshold": t}

    old = [rec(0.1, 0.4), rec(0.2, 0.6), rec(0.45, 0.7)]
    assert guide_threshold(old) == 0.5
    assert run_intervals(old, [])["fr"]["value"] == pytest.approx(2 / 3)
    new = [rec(0.1, 0.4, 0.3), rec(0.2, 0.6, 0.3), rec(0.45, 0.7, 0.3)]  # 0.45 is SP already at 0.3
    assert guide_threshold(new) == 0.3
    iv = run_intervals(new, [])["fr"]
    assert (iv["k"], iv["n"]) == (2, 2)
