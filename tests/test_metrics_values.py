"""Each metric against hand-computed values, and merging of states as DDP would (merge_state)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffice.metrics import (
    Efficiency,
    FrechetDistance,
    OracleQuality,
    SonoSim,
    Stopwatch,
    TargetDistance,
    Validity,
    frechet_distance,
    peak_memory_bytes,
)

CROSS = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # mean 0, unbiased cov = 2/3 I


def test_frechet_closed_form_1d():
    # N(1, 2^2) vs N(-2, 1^2): (1 - -2)^2 + (2 - 1)^2 = 10
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[1.0]]) == pytest.approx(10.0, abs=1e-12)


def test_frechet_closed_form_diagonal():
    # |(1,1)|^2 + (1 + 9 - 2*3) + (4 + 1 - 2*2) = 2 + 4 + 1
    d = frechet_distance([0, 0], np.diag([1.0, 4.0]), [1, 1], np.diag([9.0, 1.0]))
    assert d == pytest.approx(7.0, abs=1e-12)


def test_frechet_identical_is_zero_and_matches_scipy_sqrtm():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)  # do not commute
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(sqrtm(s1 @ s2)).real
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_metric_on_samples_with_known_moments_and_valid_mask():
    m = FrechetDistance()
    fake = torch.tensor([3.0, 4.0]) + 2 * CROSS  # mean (3,4), cov 8/3 I
    junk = torch.full((3, 2), 100.0)
    m.update(CROSS[:2], None)
    m.update(CROSS[2:], torch.cat([fake, junk]), valid=torch.tensor([True] * 4 + [False] * 3))
    # 25 + 2 * (sqrt(2/3) - sqrt(8/3))^2 = 25 + 4/3
    assert float(m.compute()) == pytest.approx(25 + 4 / 3, rel=1e-12)


def test_frechet_feature_fn_and_too_few_samples():
    m = FrechetDistance(feature_fn=lambda x: x.flatten(1)[:, :2], name="FID")
    x = torch.zeros(3, 1, 2, 2)
    m.update(x, x, valid=torch.tensor([True, False, False]))  # one valid counterfactual
    assert math.isnan(float(m.compute()))
    assert "FID" in m.note and "got 3 and 1" in m.note


def test_frechet_merge_state_equals_one_pass():
    fake = torch.tensor([3.0, 4.0]) + 2 * CROSS
    a, b = FrechetDistance(), FrechetDistance()
    a.update(CROSS[:3], fake[:1])
    b.update(CROSS[3:], fake[1:])
    a.merge_state(b)
    assert float(a.compute()) == pytest.approx(25 + 4 / 3, rel=1e-12)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_sonosim_hand_values():
    m = SonoSim()
    m.update(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [2.0, 2.0]]))  # cos 0 and 1
    assert float(m.compute()) == pytest.approx(0.5)
    m2 = SonoSim(feature_fn=lambda x: x.flatten(1))
    m2.update(torch.ones(2, 1, 2, 2), -torch.ones(2, 1, 2, 2), valid=torch.tensor([True, False]))
    assert float(m2.compute()) == pytest.approx(-1.0)
    assert math.isnan(float(SonoSim().compute()))


def test_validity_hand_values():
    m = Validity()
    # inputs the guide calls NSP: 0.2, 0.4, 0.1 (0.7 is SP and left out)
    m.update(torch.tensor([0.2, 0.4, 0.7, 0.1]), torch.tensor([0.9, 0.5, 0.8, 0.5]))
    out = m.compute()
    assert float(out["fr"]) == pytest.approx(1 / 3)            # only 0.9 is SP (p > 0.5); 0.5 is not
    assert float(out["mad"]) == pytest.approx((0.7 + 0.1 + 0.4) / 3)
    assert float(out["bkl"]) == pytest.approx((0.1 + 0.5 + 0.5) / 3)
    assert int(out["n_nsp"]) == 3 and int(out["n_total"]) == 4
    edge = Validity()
    edge.update([0.5], [0.6])  # p = 0.5 is not SP, so the input counts as NSP
    assert int(edge.compute()["n_nsp"]) == 1


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_validity_merge_and_empty():
    a, b = Validity(), Validity()
    a.update([0.2, 0.4], [0.9, 0.3])
    b.update([0.7, 0.1], [0.8, 0.5])
    a.merge_state(b)
    assert float(a.compute()["mad"]) == pytest.approx(0.4)
    assert math.isnan(float(Validity().compute()["fr"]))


def test_oracle_quality_hand_values():
    m = OracleQuality(num_concepts=2)
    nan = float("nan")
    m.update(torch.tensor([0.3, 0.6, 0.1]), torch.tensor([0.5, 0.9, 0.05]),
             torch.tensor([[0.1, nan], [0.0, 0.0], [0.5, 0.2]]), torch.tensor([[0.4, 0.3], [1.0, 1.0], [0.6, 0.1]]))
    out = m.compute()
    # frames 0 and 2 have QS_O(x) < 0.5: QD 0.2 and -0.05; the paper divides by all N = 3 inputs
    assert float(out["mqd"]) == pytest.approx((0.2 - 0.05) / 3)
    assert float(out["mqd_selected"]) == pytest.approx((0.2 - 0.05) / 2)
    assert out["qd_concepts"].tolist() == pytest.approx([(0.3 + 0.1) / 2, -0.1])  # NaN concept skipped
    assert int(out["n_selected"]) == 2 and int(out["n_total"]) == 3


def test_efficiency_hand_values_and_merge():
    a, b = Efficiency(), Efficiency()
    a.update(2.0, frames=3, nfe=30, peak_bytes=1e9)
    b.update(4.0, frames=2, nfe=20, peak_bytes=3e9)
    a.merge_state(b)
    out = a.compute()
    assert float(out["batch_seconds_mean"]) == pytest.approx(3.0)
    assert float(out["batch_seconds_std"]) == pytest.approx(math.sqrt(2.0))  # sample std of (2, 4)
    assert float(out["total_hours"]) == pytest.approx(6.0 / 3600)
    assert float(out["peak_memory_gb"]) == pytest.approx(3.0)                # max, not sum
    assert int(out["nfe"]) == 50 and float(out["nfe_per_frame"]) == pytest.approx(10.0)


def test_stopwatch_and_cpu_peak_memory():
    with Stopwatch("cpu") as sw:
        torch.ones(100).sum()
    assert 0 <= sw.seconds < 5
    assert peak_memory_bytes("cpu") > 10 * 2**20  # this process holds torch: well over 10 MiB RSS


def test_target_distance_hand_values():
    m = TargetDistance()
    m.update([0.5, 0.2, float("nan")], [0.3, 0.4, 0.1])  # the NaN frame has no target
    out = m.compute()
    assert float(out["target_l1_input"]) == pytest.approx(0.35)
    assert float(out["target_l1_cf"]) == pytest.approx(0.35)
    assert int(out["n_closer"]) == 1 and int(out["n_target"]) == 2


def test_target_l1_ranks_a_repair_with_new_speckle_closer_than_the_fault():
    from diffice.metrics import target_l1

    g = torch.Generator().manual_seed(0)
    h, w = 64, 80
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    head = (((yy - 32) / 22.0) ** 2 + ((xx - 40) / 28.0) ** 2 < 1).float()
    blob = (((yy - 30) / 5.0) ** 2 + ((xx - 36) / 6.0) ** 2 < 1).float()  # a "thalamus"
    anatomy = 0.6 * head - 0.9 * blob * head - 0.3

    def speckle():
        return 0.25 * torch.randn(1, 1, h, w, generator=g)

    s = speckle()
    target = (anatomy + s).clamp(-1, 1)
    fault = (anatomy + 0.9 * blob * head + s).clamp(-1, 1)  # the blob missing, same speckle
    repair = (anatomy + speckle()).clamp(-1, 1)  # the blob back, speckle redrawn
    pixel = lambda a: float((a - target).abs().mean())  # noqa: E731
    assert pixel(repair) > pixel(fault)  # what a pixel L1 says, and why it is not used
    d_fault = float(target_l1(fault, target)[0])
    d_repair = float(target_l1(repair, target, reference=fault)[0])
    d_other = float(target_l1(fault.flip(-1), target, reference=fault)[0])  # a wrong change
    assert d_repair < 0.5 * d_fault and d_other > d_repair
    assert float(target_l1(fault, target, reference=fault)[0]) == pytest.approx(d_fault)
    assert torch.isnan(target_l1(target, target)[0])  # no fault, no footprint
    assert target_l1(torch.zeros(3, 1, h, w), torch.ones(3, 1, h, w)).tolist() == pytest.approx([1.0] * 3)
