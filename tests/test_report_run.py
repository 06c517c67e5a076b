"""results.csv / metrics.json / report.html from a fake run folder; evaluate reproduces them."""

from __future__ import annotations

import csv
import json
import re

import pytest

from diffice.errors import UserError
from diffice.report import finalize_run
from diffice.report.records import load_records
from tests._fake_run import fake_eval_nets, make_fake_run

# Four frames with hand-picked scores (iterations=2):
#  guide NSP inputs (p_input < 0.5): frames 0, 1, 3; frame 2 is called SP and left out of FR/MAD/BKL
#  oracle-selected inputs (QS_O(x) < 0.5): frames 0, 2
HAND = [
    dict(p_input=0.2, p_iters=[0.6, 0.9], p_cf=0.9, qs_input=0.3, qs_cf=0.5, seconds=1.0, nfe=20,
         concepts_input={"qs_th": 0.1, "qs_fp": 0.5}, concepts_cf={"qs_th": 0.4, "qs_fp": 0.5},
         target_l1_input=0.5, target_l1_cf=0.3),
    dict(p_input=0.4, p_iters=[0.35, 0.3], p_cf=0.3, qs_input=0.6, qs_cf=0.9, seconds=1.0, nfe=20,
         concepts_input={"qs_th": 0.0, "qs_fp": 0.0}, concepts_cf={"qs_th": 1.0, "qs_fp": 1.0},
         target_l1_input=0.2, target_l1_cf=0.4),
    dict(p_input=0.7, p_iters=[0.75, 0.8], p_cf=0.8, qs_input=0.1, qs_cf=0.05, seconds=3.0, nfe=20,
         concepts_input={"qs_th": 0.5, "qs_fp": 0.2}, concepts_cf={"qs_th": 0.6, "qs_fp": 0.1},
         target_l1_input=0.4, target_l1_cf=0.1),
    dict(p_input=0.1, p_iters=[0.3, 0.55], p_cf=0.55, qs_input=0.55, qs_cf=0.6, seconds=3.0, nfe=40,
         concepts_input={"qs_th": 0.2, "qs_fp": 0.3}, concepts_cf={"qs_th": 0.2, "qs_fp": 0.3},
         target_l1_input=0.3, target_l1_cf=0.2),
]


@pytest.fixture
def hand_run(tmp_path):
    return make_fake_run(tmp_path / "run", frames=[dict(h, batch_seconds=2 * h["seconds"]) for h in HAND],
                         iterations=2, batch_size=2, with_qs_iters=False)


def test_metrics_json_matches_hand_values(hand_run):
    out = finalize_run(hand_run, nets=fake_eval_nets(), log_wandb=False, progress=False)
    m = json.loads((hand_run / "metrics.json").read_text())
    assert m["n_frames"] == 4 and m["iterations"] == 2 and m["n_nsp_guide"] == 3
    assert m["fr"] == pytest.approx(2 / 3)                               # 0.9 and 0.55 flip; 0.3 does not
    assert m["mad"] == pytest.approx((0.7 + 0.1 + 0.45) / 3)
    assert m["bkl"] == pytest.approx((0.1 + 0.7 + 0.45) / 3)
    assert m["mqd"] == pytest.approx((0.2 - 0.05) / 4)                   # frames 0 and 2, over all N = 4
    assert m["mqd_selected"] == pytest.approx((0.2 - 0.05) / 2)
    assert m["qd"] == pytest.approx({"qs_th": (0.3 + 0.1) / 2, "qs_fp": (0.0 - 0.1) / 2})
    assert m["n_closer_to_target"] == 3 and m["n_target"] == 4
    assert m["target_l1_input"] == pytest.approx(1.4 / 4) and m["target_l1_cf"] == pytest.approx(1.0 / 4)
    # two batches (batch_size=2) of 2 s and 6 s
    assert m["n_batches"] == 2 and m["batch_seconds_mean"] == pytest.approx(4.0)
    assert m["total_hours"] == pytest.approx(8 / 3600) and m["nfe"] == 100
    # per pass: frames' seconds_iters shares summed per batch; fake shares are 0.1 k s per frame
    assert m["per_iteration"][1]["batch_seconds_mean"] == pytest.approx(2 * 0.2)
    assert m["per_iteration"][1]["iteration_hours"] == pytest.approx(4 * 0.2 / 3600)
    # iteration 1: guide p = 0.6, 0.35, 0.3 on the NSP inputs -> FR 1/3
    assert m["per_iteration"][0]["fr"] == pytest.approx(1 / 3)
    assert m["per_iteration"][1]["mad"] == pytest.approx(m["mad"])
    # 4 inputs and 3 valid counterfactuals: no Fréchet distance (shown from FRECHET_MIN_N a side), KID beside it
    assert m["fid"] is None and m["fsd"] is None and m["fid_n"] == [4, 3]
    assert any(n.startswith("FID: n/a (N too small: 4 vs 3") for n in m["notes"])
    for key in ("kid", "kid_std", "kid_fsd", "kid_fsd_std", "sonosim"):
        assert isinstance(m[key], float)
    # every interval's point estimate is the metric itself; FR is 2 of 3 NSP inputs (Clopper-Pearson)
    iv = m["intervals"]
    assert iv["fr"]["k"] == 2 and iv["fr"]["n"] == 3 and iv["fr"]["value"] == pytest.approx(m["fr"])
    assert (iv["fr"]["low"], iv["fr"]["high"]) == pytest.approx((0.0943, 0.9916), abs=1e-4)
    for key in ("mad", "bkl", "mqd", "mqd_selected", "sonosim", "target_l1_input", "target_l1_cf"):
        assert iv[key]["value"] == pytest.approx(m[key]) and iv[key]["low"] <= m[key] <= iv[key]["high"], key
    assert iv["closer_to_target"]["k"] == m["n_closer_to_target"] and iv["closer_to_target"]["n"] == m["n_target"]
    assert iv["qd_qs_th"]["value"] == pytest.approx(m["qd"]["qs_th"])
    assert m["per_iteration"][0]["intervals"]["fr"]["value"] == pytest.approx(1 / 3)
    assert out["fr"] == m["fr"] and out["report"].endswith("report.html")
    assert "| Diff-ICE |" in out["table"]


def test_results_csv_one_row_per_input_and_rebuilt_identically(hand_run):
    finalize_run(hand_run, nets=None, log_wandb=False, progress=False)
    first = (hand_run / "results.csv").read_bytes()
    rows = list(csv.DictReader(open(hand_run / "results.csv")))
    assert [int(r["index"]) for r in rows] == [3, 5, 7, 9]
    assert [r["flipped"] for r in rows] == ["True", "False", "True", "True"]
    assert float(rows[0]["qs_cf"]) - float(rows[0]["qs_input"]) == pytest.approx(0.2)
    assert rows[1]["p_iter2"] == "0.3" and "qs_th_cf" in rows[0]
    finalize_run(hand_run, nets=None, log_wandb=False, progress=False)
    assert (hand_run / "results.csv").read_bytes() == first


def test_no_images_gives_nulls_and_a_note(hand_run):
    finalize_run(hand_run, nets=None, log_wandb=False, progress=False)
    m = json.loads((hand_run / "metrics.json").read_text())
    assert m["fid"] is None and m["sonosim"] is None
    assert any("FID" in n for n in m["notes"])
    # no qs_iters in the records and no oracle: per-iteration MQD unavailable, said so
    assert m["per_iteration"][0]["mqd"] is None and any("qs_iters" in n for n in m["notes"])


def test_per_iteration_mqd_from_oracle_images(hand_run):
    finalize_run(hand_run, nets=fake_eval_nets(), log_wandb=False, progress=False)
    m = json.loads((hand_run / "metrics.json").read_text())
    assert isinstance(m["per_iteration"][0]["mqd"], float)


def test_too_few_valid_counterfactuals_is_nan_with_note(tmp_path):
    frames = [dict(HAND[0], p_iters=[0.1, 0.2], p_cf=0.2), dict(HAND[1])]  # nothing flips
    run = make_fake_run(tmp_path / "run", frames=frames, iterations=2)
    finalize_run(run, nets=fake_eval_nets(), log_wandb=False, progress=False)
    m = json.loads((run / "metrics.json").read_text())
    assert m["fid"] is None and m["kid"] is None and any("FID" in n and "got 2 and 0" in n for n in m["notes"])


def test_evaluate_reproduces_metrics_json(hand_run, monkeypatch, capsys):
    from diffice.report import commands, compute, finalize

    finalize_run(hand_run, nets=fake_eval_nets(), log_wandb=False, progress=False)
    before = (hand_run / "metrics.json").read_bytes()
    (hand_run / "results.csv").unlink()
    monkeypatch.setattr(compute, "load_eval_nets", lambda cfg, **kw: fake_eval_nets())
    monkeypatch.setattr(finalize, "load_eval_nets", lambda cfg, **kw: fake_eval_nets())
    assert commands.evaluate_main([str(hand_run), "--no-wandb"]) == 0
    assert (hand_run / "metrics.json").read_bytes() == before
    assert (hand_run / "results.csv").is_file()
    assert commands.evaluate_main([str(hand_run), "--check"]) == 0
    assert "reproduced" in capsys.readouterr().out
    m = json.loads(before)
    m["fr"] = 0.5
    (hand_run / "metrics.json").write_text(json.dumps(m))
    assert commands.evaluate_main([str(hand_run), "--check"]) == 1
    assert "fr: 0.5 ->" in capsys.readouterr().out


def test_evaluate_two_runs_one_table(tmp_path, capsys):
    from diffice.report.commands import evaluate_main

    a = make_fake_run(tmp_path / "a", n=3, method="diff-ice1", iterations=1)
    b = make_fake_run(tmp_path / "b", n=3, method="dime", iterations=1)
    table = tmp_path / "table.md"
    assert evaluate_main([str(a), str(b), "--no-images", "--no-wandb", "--table", str(table)]) == 0
    text = table.read_text()
    assert "| Diff-ICE1 |" in text and "| DiME |" in text and "Table 2" not in text


def test_evaluate_missing_checkpoint_is_user_error(hand_run):
    from diffice.report.commands import evaluate_main

    with pytest.raises(UserError, match="checkpoint not found"):
        evaluate_main([str(hand_run), "--no-wandb"])


def test_report_html_is_self_contained(hand_run):
    finalize_run(hand_run, nets=fake_eval_nets(), log_wandb=False, progress=False, frames=3)
    page = (hand_run / "report.html").read_text()
    refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', page, flags=re.I)
    assert refs and all(r.startswith("data:") or r.startswith("#") for r in refs)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert page.count("<svg") == 1 and page.count("<circle") >= 2      # Fig. 4 with points
    assert page.count("data:image/png;base64,") >= 3 * 8                  # 3 frames x (input, seg, 2 iters, cf, seg, diff, target)
    assert "Table 2" in page and "FID" in page


def test_bad_run_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        finalize_run(tmp_path / "nope", nets=None, log_wandb=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no frames/\\*/record.json"):
        finalize_run(tmp_path / "empty", nets=None, log_wandb=False)
    run = make_fake_run(tmp_path / "run", n=2)
    bad = sorted((run / "frames").glob("*/record.json"))[0]
    bad.write_text("{not json")
    with pytest.raises(UserError, match="unreadable record"):
        load_records(run)
    bad.write_text(json.dumps({"index": 1}))
    with pytest.raises(UserError, match="lacks key"):
        load_records(run)
    run2 = make_fake_run(tmp_path / "run2", n=2, write_config=False)
    with pytest.raises(UserError, match="config.yaml: not found"):
        finalize_run(run2, nets=None, log_wandb=False)


def test_missing_png_is_user_error(hand_run):
    next((hand_run / "frames").glob("*/cf.png")).unlink()
    with pytest.raises(UserError, match="cf.png: image missing"):
        finalize_run(hand_run, nets=fake_eval_nets(), log_wandb=False, progress=False)


def test_concept_columns_follow_the_config_order(tmp_path):
    frames = [dict(h, concepts_input=dict(reversed(list(h["concepts_input"].items()))),
                   concepts_cf=dict(reversed(list(h["concepts_cf"].items())))) for h in HAND]
    run = make_fake_run(tmp_path / "run", frames=frames, iterations=2)  # records list qs_fp before qs_th
    finalize_run(run, nets=None, log_wandb=False, progress=False)
    m = json.loads((run / "metrics.json").read_text())
    assert list(m["qd"]) == ["qs_th", "qs_fp"]  # cfg.data.concepts order: qs_th, qs_csp, qs_fp, qs_bone


def test_each_distinct_image_goes_through_the_feature_nets_once(tmp_path):
    from diffice.report.compute import EvalNets, compute_metrics
    from tests._fake_run import FakeNets

    seen = []

    def fid(x):
        seen.append(len(x))
        return FakeNets.fid(x)

    run = make_fake_run(tmp_path / "run", n=5, iterations=3)  # cf.png is a copy of iter3.png
    compute_metrics(load_records(run), nets=EvalNets(fid=fid, sononet=FakeNets.sononet), progress=False)
    targets = sum((r["_dir"] / "target.png").is_file() for r in load_records(run))
    # input + 3 iterations per frame (+ its ground-truth target); cf and iterations reuse features
    assert sum(seen) == 5 * (1 + 3) + targets


def test_cli_evaluate_and_one_line_errors(hand_run, tmp_path, capsys):
    from diffice.cli import main

    assert main(["evaluate", str(hand_run), "--no-images", "--no-wandb"]) == 0
    assert "| Diff-ICE |" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "absent"), "--no-images"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "absent" in err
    assert main(["reader-score", str(hand_run), str(tmp_path / "a.csv")]) == 2
    assert "reader-study" in capsys.readouterr().err


def test_wandb_table_rows_and_scalars(hand_run):
    from diffice.report.compute import compute_metrics
    from diffice.report.wandb_log import frame_table_rows, scalar_metrics

    records = load_records(hand_run)
    cols, rows = frame_table_rows(records, 2)
    assert cols[:6] == ["index", "id", "input", "seg_input", "iter1", "iter2"] and len(rows) == 4
    assert all(isinstance(rows[0][cols.index(c)], bytes) for c in ("input", "iter2", "cf", "diff", "target"))
    assert rows[1][cols.index("flipped")] is False
    s = scalar_metrics(compute_metrics(records, nets=None, progress=False))
    assert s["cf/fr"] == pytest.approx(2 / 3) and "cf/fid" not in s and "cf/qd_qs_th" in s


def test_kid_against_the_clean_targets_of_the_frames_that_have_one(tmp_path):
    from diffice.report.compute import EvalNets, compute_metrics
    from tests._fake_run import FakeNets

    nets = EvalNets(fid=FakeNets.fid, sononet=FakeNets.sononet)
    m = compute_metrics(load_records(make_fake_run(tmp_path / "run", n=6, iterations=1)), nets=nets, progress=False)
    assert m["kid_target_n"] == 6 and m["kid_fsd_target_n"] == 6
    assert m["kid_target_input"] is not None and m["kid_target_cf_std"] is not None
    none = compute_metrics(load_records(make_fake_run(tmp_path / "bare", n=6, iterations=1, with_target=False)),
                           nets=nets, progress=False)
    assert "kid_target_cf" not in none  # without targets there is nothing to compare with


def test_artifact_metadata_stays_within_wandbs_limit():
    from diffice.report.wandb_log import ARTIFACT_KEYS, artifact_metadata

    scalars = {f"cf/m{i:03d}": float(i) for i in range(80)} | {f"cf/ci/m{i:03d}_low": 0.0 for i in range(80)}
    meta = artifact_metadata({"method": "diff-ice"}, 5, scalars)
    assert len(meta) == ARTIFACT_KEYS and meta["n_frames"] == 5 and all(f"cf/m{i:03d}" in meta for i in range(80))
