"""The adversarial-texture flag and the whole-sector distance to the phantom's target."""

from __future__ import annotations

import json

import pytest
import torch

from diffice.config import load_config
from diffice.metrics.target import sector_l1, target_l1
from diffice.metrics.texture import hf_energy, hf_threshold
from diffice.modules.counterfactual import run_counterfactuals
from diffice.report.compute import compute_metrics
from diffice.report.records import load_records
from tests.cf_fakes import FakeDataModule, fake_components
from tests.conftest import ROOT


def test_hf_energy_known_answers():
    flat = torch.full((1, 1, 8, 8), 0.3)
    assert float(hf_energy(flat)[0]) == 0.0
    ramp = torch.linspace(-1, 1, 8).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    assert float(hf_energy(ramp)[0]) < 0.05  # a smooth gradient: no Laplacian inside, a little at the borders
    checker = ((torch.arange(8).view(-1, 1) + torch.arange(8)) % 2).float().mul(2).sub(1).view(1, 1, 8, 8)
    # interior pixels: |4·1 + 4·1| = 8 -> 64; replicate-padded borders less
    e = float(hf_energy(checker)[0])
    assert 30.0 < e <= 64.0
    assert hf_threshold([torch.stack([flat[0], checker[0]])], quantile=1.0) == pytest.approx(e)
    assert hf_threshold([]) != hf_threshold([])  # NaN without frames


def test_sector_distance_sees_damage_outside_the_footprint():
    target = torch.full((1, 1, 32, 40), -1.0)
    target[..., 4:28, 5:35] = 0.0            # the imaged sector
    x = target.clone()
    x[..., 10:14, 10:14] = 0.8               # the fault: a bright patch
    repaired_but_damaged = target.clone()
    repaired_but_damaged[..., 18:26, 20:34] = -0.6   # patch fixed, anatomy elsewhere lost
    foot_in, foot_cf = target_l1(x, target), target_l1(repaired_but_damaged, target, reference=x)
    assert float(foot_cf) < float(foot_in)   # inside the footprint it looks like a repair
    assert float(sector_l1(repaired_but_damaged, target)) > float(sector_l1(x, target))  # the sector says otherwise
    black = torch.full((1, 1, 8, 8), -1.0)
    assert torch.isnan(sector_l1(black, black)).all()


def test_run_records_flag_and_counts(tiny_overrides, tmp_path):
    cfg = load_config([ROOT / "configs/preset/tiny.yaml"],
                      [*tiny_overrides, "cf.tau=3", "cf.iterations=1", "cf.batch_size=2", f"cf.out={tmp_path / 'cf'}"])
    out, indices = run_counterfactuals(cfg, fake_components(), FakeDataModule(6, labels=[0, 1, 0, 1, 0, 1]))
    recs = [json.loads((out / "frames" / f"{i:06d}" / "record.json").read_text()) for i in indices]
    thr = recs[0]["hf_threshold"]
    assert thr is not None and thr > 0  # from the SP frames of the training split
    for r in recs:
        assert r["adversarial"] == (r["hf_cf"] > thr)
        assert r["judge_seconds"] >= 0 and r["batch_seconds"] > 0
    m = compute_metrics(load_records(out), nets=None, progress=False)
    assert m["n_adversarial"] == sum(r["adversarial"] for r in recs)
    assert m["hf_threshold"] == pytest.approx(thr)
    assert set(m["anatomy_dice"]) <= {"head", "bone", "th", "csp"}
    assert m["n_target_sector"] == sum(r["target_sector_l1_cf"] is not None for r in recs) > 0


def test_hf_energy_of_a_frame_does_not_depend_on_its_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 48, 64, generator=g) * 2 - 1
    whole = hf_energy(x)
    for i in range(5):
        assert torch.equal(whole[i : i + 1], hf_energy(x[i : i + 1]))
    assert torch.equal(hf_energy(x[1:4]), whole[1:4])
