"""Reader study: blinded page + hidden key, answers CSV scored against the key; bad inputs."""

from __future__ import annotations

import json
import re

import pytest

from diffice.errors import UserError
from diffice.report.commands import reader_score_main, reader_study_main
from diffice.report.reader import KEY_NAME, PAGE_NAME, clopper_pearson, make_study, score_answers
from tests._fake_run import make_fake_run

# QD_O = qs_cf - qs_input: frames 0, 1, 3, 4 improve; frame 2 gets worse and must never be shown
FRAMES = [dict(qs_input=0.2, qs_cf=0.6), dict(qs_input=0.3, qs_cf=0.4), dict(qs_input=0.5, qs_cf=0.1),
          dict(qs_input=0.1, qs_cf=0.9), dict(qs_input=0.4, qs_cf=0.45)]


@pytest.fixture
def run(tmp_path):
    return make_fake_run(tmp_path / "run", frames=FRAMES, iterations=1)


def _answers(path, key, prefer_cf: list[bool], study=None):
    lines = ["study,reader,pair,choice"]
    for p, pref in zip(key["pairs"], prefer_cf):
        other = "B" if p["cf_side"] == "A" else "A"
        lines.append(f"{study or key['study']},dr x,{p['pair']},{p['cf_side'] if pref else other}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_study_round_trip(run, tmp_path, capsys):
    assert reader_study_main([str(run), "--pairs", "10", "--seed", "3"]) == 0
    assert "only 4 frames have QD_O > 0" in capsys.readouterr().out
    key = json.loads((run / KEY_NAME).read_text())
    assert len(key["pairs"]) == 4
    assert sorted(p["index"] for p in key["pairs"]) == [3, 5, 9, 11]  # frame 2 (index 7) has QD < 0
    page = (run / PAGE_NAME).read_text()
    assert page.count('class="pair"') == 4 and key["study"] in page
    refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', page)
    assert refs and all(r.startswith("data:") for r in refs)
    assert "cf_side" not in page and all(p["id"] not in page for p in key["pairs"])  # nothing of the key leaks
    ans = _answers(tmp_path / "a.csv", key, [True, True, True, False])
    s = score_answers(run, ans)
    assert (s["preferred_cf"], s["answered"]) == (3, 4) and s["fraction_cf"] == pytest.approx(0.75)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx(clopper_pearson(3, 4))
    assert s["readers"] == ["dr x"]
    assert reader_score_main([str(run), str(ans)]) == 0
    assert "3 of 4" in capsys.readouterr().out


def test_sides_are_randomised_and_seeded(tmp_path):
    frames = [dict(qs_input=0.1, qs_cf=0.2 + 0.01 * i) for i in range(24)]
    r = make_fake_run(tmp_path / "r", frames=frames, iterations=1, n=24)
    k1 = make_study(r, pairs=20, seed=1)
    sides = [p["cf_side"] for p in k1["pairs"]]
    assert 0 < sides.count("A") < 20                          # both sides used
    assert [p["index"] for p in k1["pairs"]] != sorted(p["index"] for p in k1["pairs"])  # order shuffled
    k2 = make_study(r, pairs=20, seed=1, force=True)
    assert [(p["index"], p["cf_side"]) for p in k2["pairs"]] == [(p["index"], p["cf_side"]) for p in k1["pairs"]]


def test_clopper_pearson_closed_forms():
    # k = n: lower bound solves p^n = alpha/2; k = 0: upper bound solves (1-p)^n = alpha/2
    assert clopper_pearson(5, 5) == pytest.approx((0.025 ** (1 / 5), 1.0))
    assert clopper_pearson(0, 8) == pytest.approx((0.0, 1 - 0.025 ** (1 / 8)))


def test_unanswered_pairs_are_skipped(run, tmp_path):
    key = make_study(run, pairs=4)
    ans = _answers(tmp_path / "a.csv", key, [True, False, True, True])
    lines = ans.read_text().splitlines()
    lines[2] = ",".join(lines[2].split(",")[:3] + [""])  # pair left blank
    ans.write_text("\n".join(lines) + "\n")
    s = score_answers(run, ans)
    assert (s["preferred_cf"], s["answered"], s["pairs"]) == (3, 3, 4)


def test_bad_inputs_are_user_errors(run, tmp_path):
    with pytest.raises(UserError, match="no reader-study key"):
        score_answers(run, tmp_path / "x.csv")
    key = make_study(run, pairs=4)
    with pytest.raises(UserError, match="already exists"):
        make_study(run, pairs=4)
    with pytest.raises(UserError, match="answers file not found"):
        score_answers(run, tmp_path / "missing.csv")
    with pytest.raises(UserError, match="another page"):
        score_answers(run, _answers(tmp_path / "w.csv", key, [True] * 4, study="0123456789ab"))
    bad = _answers(tmp_path / "b.csv", key, [True] * 4)
    bad.write_text(bad.read_text() + f"{key['study']},x,99,A\n")
    with pytest.raises(UserError, match="pair 99 is not in the study"):
        score_answers(run, bad)
    dup = _answers(tmp_path / "d.csv", key, [True] * 4)
    dup.write_text(dup.read_text() + dup.read_text().splitlines()[1] + "\n")
    with pytest.raises(UserError, match="answered twice"):
        score_answers(run, dup)
    (tmp_path / "c.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="expected columns"):
        score_answers(run, tmp_path / "c.csv")
    worse = make_fake_run(tmp_path / "worse", frames=[dict(qs_input=0.5, qs_cf=0.1)], iterations=1)
    with pytest.raises(UserError, match="no frame has QD_O > 0"):
        make_study(worse)


def test_page_javascript_writes_answers_that_score(run, tmp_path):
    """Run the page's own script under node with a stub DOM: the CSV it downloads scores."""
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed")
    key = make_study(run, pairs=4)
    script = re.search(r"<script>(.*)</script>", (run / PAGE_NAME).read_text(), re.S).group(1)
    # the reader clicks the counterfactual in every pair but the last, which stays unanswered
    picks = {p["pair"]: p["cf_side"] for p in key["pairs"][:-1]}
    stub = (
        f"const picks={json.dumps({str(k): v for k, v in picks.items()})};"
        "const pairs=Object.keys(picks).concat(['4']).map(n=>({dataset:{pair:n},"
        "querySelector:()=>picks[n]?{value:picks[n]}:null}));"
        "global.document={getElementById:id=>id==='reader'?{value:'Dr, A'}:{textContent:''},"
        "querySelectorAll:()=>pairs,addEventListener:()=>{}};"
    )
    out = subprocess.run([node, "-e", stub + script + "process.stdout.write(answers().csv);"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    ans = tmp_path / "answers.csv"
    ans.write_text(out)
    s = score_answers(run, ans)
    assert (s["preferred_cf"], s["answered"], s["pairs"]) == (3, 3, 4)
    assert s["readers"] == ["Dr  A"]
