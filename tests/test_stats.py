"""Intervals, KID, the Fréchet gate and `diffice compare` (issue 24), against known cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffice.cli import main
from diffice.metrics.kid import FRECHET_MIN_N, frechet_shown, kernel_distance
from diffice.metrics.stats import (
    clopper_pearson,
    fmt_interval,
    mcnemar,
    mean_interval,
    paired_difference,
    rate_interval,
    seed_interval,
)
from tests._fake_run import make_fake_run


@pytest.mark.parametrize("k, n, low, high", [
    (0, 10, 0.0, 0.30850),      # 1 - 0.025 ** (1/10)
    (10, 10, 0.69150, 1.0),     # 0.025 ** (1/10)
    (5, 10, 0.18709, 0.81291),  # the textbook Clopper-Pearson case
])
def test_rate_interval_known_cases(k, n, low, high):
    iv = rate_interval(k, n)
    assert iv["value"] == pytest.approx(k / n) and iv["n"] == n and iv["k"] == k
    assert (iv["low"], iv["high"]) == pytest.approx((low, high), abs=1e-5)
    assert iv["method"] == "Clopper-Pearson"


def test_clopper_pearson_is_the_beta_quantiles_and_exact_at_the_ends():
    from scipy.stats import beta

    for n in (1, 2, 7, 40, 500):
        for k in sorted({0, 1, n // 2, n - 1, n}):
            lo, hi = clopper_pearson(k, n)
            assert (lo == 0.0) == (k == 0) and (hi == 1.0) == (k == n)  # the fixed ends exactly
            old_lo = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
            old_hi = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
            assert (lo, hi) == pytest.approx((old_lo, old_hi), rel=1e-8, abs=1e-12)  # within evaluate --check's 1e-6


def test_rate_interval_empty_and_bad():
    assert rate_interval(0, 0)["value"] is None and rate_interval(0, 0)["low"] is None
    with pytest.raises(ValueError):
        rate_interval(3, 2)


def test_bootstrap_mean_interval_covers_and_is_reproducible():
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 1.0, size=400)
    iv = mean_interval(x)
    assert iv["value"] == pytest.approx(x.mean())
    # close to the normal-theory interval (mean ± 1.96 sd / sqrt n)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert iv["low"] == pytest.approx(x.mean() - half, abs=0.03) and iv["high"] == pytest.approx(x.mean() + half, abs=0.03)
    assert mean_interval(x) == iv                                   # seeded: byte-identical files
    assert mean_interval([1.0, None, float("nan")])["n"] == 1      # non-finite values skipped
    assert mean_interval([1.0])["low"] is None                     # no interval from one value
    const = mean_interval([0.5] * 8)
    assert const["low"] == const["high"] == 0.5


def test_seed_interval_is_student_t():
    iv = seed_interval([0.5, 0.6, 0.7])
    # mean 0.6, sd 0.1, t(0.975, 2) = 4.3027
    assert iv["value"] == pytest.approx(0.6)
    assert iv["high"] - iv["value"] == pytest.approx(4.3027 * 0.1 / np.sqrt(3), rel=1e-4)
    same = seed_interval([1.0, 1.0, 1.0])  # seeds that agree: a point, not NaN (scipy's zero scale)
    assert same["low"] == same["high"] == same["value"] == 1.0


def test_mcnemar_exact():
    a = [True] * 10 + [False] * 10
    b = [True] * 10 + [True] * 8 + [False] * 2      # B wins 8 discordant frames, A none
    res = mcnemar(a, b)
    assert (res["a_only"], res["b_only"], res["both"]) == (0, 8, 10)
    assert res["p_value"] == pytest.approx(2 * 0.5 ** 8)
    assert mcnemar(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError):
        mcnemar([True], [True, False])


def test_paired_difference():
    a = np.linspace(0, 1, 30)
    res = paired_difference(a, a + 0.1)
    assert res["value"] == pytest.approx(0.1) and res["low"] == pytest.approx(0.1) and res["p_value"] < 1e-5
    same = paired_difference(a, a)
    assert same["value"] == 0 and same["p_value"] == 1.0


def test_fmt_interval():
    assert fmt_interval(rate_interval(5, 10), 2) == "0.50 [0.19, 0.81]"
    assert fmt_interval(None) == "–"
    from diffice.metrics.stats import fmt_rate

    assert fmt_rate(rate_interval(5, 10)) == "5 of 10 (0.50 [0.19, 0.81])"
    assert fmt_rate(rate_interval(6, 11), percent=True) == "6 of 11 (55 % [23, 83])"
    assert fmt_rate(rate_interval(0, 0), missing="n/a") == "n/a"


def test_kid_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    same = kernel_distance(a, b)
    far = kernel_distance(a, rng.normal(1.0, 1.0, size=(200, 16)))
    assert same["subset_size"] == 100 and abs(same["kid"]) < 3 * same["kid_std"] + 1e-3
    assert far["kid"] > 10 * max(abs(same["kid"]), same["kid_std"])
    assert kernel_distance(a, b) == same                          # seeded subsets: reproducible
    assert kernel_distance(a[:1], b)["kid"] is None


def test_frechet_gate():
    assert not frechet_shown(16, 16) and not frechet_shown(FRECHET_MIN_N, FRECHET_MIN_N - 1)
    assert frechet_shown(FRECHET_MIN_N, 3000)


def _cf_run(root, flips, closer, method="diff-ice"):
    frames = []
    for f, c in zip(flips, closer):
        frames.append(dict(p_input=0.2, p_iters=[0.9 if f else 0.3], p_cf=0.9 if f else 0.3, flipped=f,
                           qs_input=0.3, qs_cf=0.6 if f else 0.3, target_l1_input=0.5,
                           target_l1_cf=0.3 if c else 0.6))
    return make_fake_run(root, frames=frames, iterations=1, method=method)


def test_compare_two_runs_paired(tmp_path, capsys):
    n = 20
    control = _cf_run(tmp_path / "control", [False] * n, [i < 4 for i in range(n)], method="control")
    guided = _cf_run(tmp_path / "guided", [i < 16 for i in range(n)], [i < 14 for i in range(n)])
    out = tmp_path / "cmp" / "compare.md"
    assert main(["compare", str(control), str(guided), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    res = json.loads(out.with_suffix(".json").read_text())
    flipped = next(b for b in res["binary"] if b["outcome"].startswith("flipped"))
    assert (flipped["n"], flipped["a"], flipped["b"], flipped["b_only"]) == (n, 0, 16, 16)
    assert flipped["p_value"] == pytest.approx(2 * 0.5 ** 16)
    closer = next(b for b in res["binary"] if b["outcome"] == "closer to the target (footprint)")
    assert (closer["a"], closer["b"], closer["a_only"], closer["b_only"]) == (4, 14, 0, 10)
    assert closer["p_value"] == pytest.approx(2 * 0.5 ** 10)
    assert "exact McNemar" in text and out.read_text() in text + "\n"


def test_compare_per_group_of_the_frame_id(tmp_path, capsys):
    n = 20
    control = _cf_run(tmp_path / "control", [False] * n, [False] * n, method="control")
    guided = _cf_run(tmp_path / "guided", [i < 10 for i in range(n)], [i < 10 for i in range(n)])
    # ids phantom_00003, phantom_00005, ... phantom_00041 (frame i has index 3 + 2 i): the group is the tens digit
    assert main(["compare", str(control), str(guided), "--by", r"_000(\d)\d$", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["group_sizes"] == {"0": 4, "1": 5, "2": 5, "3": 5, "4": 1}
    closer = {g: {b["outcome"]: b for b in rows}["closer to the target (footprint)"] for g, rows in res["groups"].items()}
    assert [closer[g]["b"] for g in "01234"] == [4, 5, 1, 0, 0] and all(closer[g]["a"] == 0 for g in "01234")
    flipped = {b["outcome"]: b for b in res["groups"]["1"]}["flipped (guide calls the cf SP)"]
    assert flipped["p_value"] == pytest.approx(2 * 0.5 ** 5)
    assert main(["compare", str(control), str(guided), "--by", "_("]) == 2
    assert "--by" in capsys.readouterr().err


def test_compare_refuses_other_frames(tmp_path, capsys):
    a = make_fake_run(tmp_path / "a", n=3, first_index=0)
    b = make_fake_run(tmp_path / "b", n=3, first_index=10)
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none of the frames" in err[0]


def test_ratio_interval_pools():
    from diffice.metrics.stats import ratio_interval

    iv = ratio_interval([2, 4, 6], [4, 4, 8])        # pooled 12 / 16, not the mean of ratios (0.708)
    assert iv["value"] == pytest.approx(0.75) and iv["low"] <= 0.75 <= iv["high"]
    assert ratio_interval([1], [2])["low"] is None and ratio_interval([0, 0], [0, 0])["value"] is None
