"""Where a counterfactual changed the frame (metrics.locality): footprint share, PSNR outside, regions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffice.metrics.locality import change_locality, footprint
from diffice.metrics.psnr import PSNR_CAP
from diffice.report.intervals import run_intervals
from diffice.report.tables import locality_rows


def _frames():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 32, 40, generator=g) * 0.2 - 0.5
    target = x.clone()
    target[:, 8:16, 10:20] += 0.6  # the fault hid a bright structure here
    return x, target


def test_a_repair_inside_the_footprint_is_all_inside():
    x, target = _frames()
    fp = footprint(x[None], target[None])
    assert fp[0, 0, 8:16, 10:20].all() and not fp[0, 0, 28:, :].any()
    cf = x.clone()
    cf[:, 9:15, 11:19] += 0.5
    seg = np.zeros((32, 40), np.int64)
    seg[8:16, 10:20] = 2
    c = change_locality(x, cf, seg, ["background", "head", "th"], target)
    assert c["in_footprint"] == pytest.approx(1.0) and c["psnr_outside"] == PSNR_CAP  # nothing changed outside
    assert c["regions"]["th"] == pytest.approx(1.0) and c["regions"]["background"] == 0.0
    assert c["changed_fraction"] == pytest.approx(6 * 8 / (32 * 40))


def test_a_redrawn_frame_changes_everywhere():
    x, target = _frames()
    cf = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    c = change_locality(x, cf, None, (), target)
    assert c["in_footprint"] == pytest.approx(c["footprint_fraction"], abs=0.05)  # change in proportion to area
    assert 20 < c["psnr_outside"] < 40 and c["changed_fraction"] > 0.7 and "regions" not in c
    assert "in_footprint" not in change_locality(x, cf)  # no target: no footprint


def test_intervals_and_table():
    recs = [{"p_input": 0.1, "qs_input": 0.2, "p_cf": 0.9, "qs_cf": 0.8, "flipped": True,
             "change": {"in_footprint": 0.5 + 0.02 * i, "psnr_outside": 30.0 + i, "changed_fraction": 0.3}}
            for i in range(10)]
    iv = run_intervals(recs, [])
    assert iv["change_in_footprint"]["value"] == pytest.approx(0.59) and iv["change_psnr_outside"]["n"] == 10
    header, rows = locality_rows([{"method": "diff-ice", "intervals": iv}])
    assert rows[0][0] == "Diff-ICE" and rows[0][2].startswith("0.590 [") and "(n 10)" in rows[0][3]
    assert locality_rows([{"method": "dime", "intervals": {}}]) is None
