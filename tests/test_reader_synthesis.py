"""Reader studies of a synthesis run folder: real vs synthetic, normal vs edited (pairs or single
frames). A fake run folder of tiny PNGs and record.json files; no models."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
from PIL import Image

from diffice.cli import main
from diffice.errors import UserError
from diffice.report.reader import KEY_NAME, score_answers
from diffice.report.reader_synthesis import key_name, make_synthesis_study, page_name


def _png(path, rng, text: str | None = None):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("Comment", text)  # metadata that would give the answer away if copied into the page
    Image.fromarray(rng.integers(0, 255, (8, 10), dtype=np.uint8)).save(path, pnginfo=info)


def make_synthesis_run(root, layouts: int = 4, samples: int = 2, edits: tuple[int, ...] = (1, 2, 1, 1),
                       anomalies: tuple[str, ...] | None = None, real: bool = True):
    """``layouts`` layout folders (real.png, sample_*.png) and edit folders per source frame
    (``edits[i]`` edits of frame i), as 'diffice synthesize --test' writes them."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "run.json").write_text(json.dumps({"kind": "synthesis", "version": 1, "settings": {"synthesis": {"count": samples}}}))
    for i in range(layouts):
        d = root / "layouts" / f"{10 * i:06d}"
        d.mkdir(parents=True)
        if real:
            _png(d / "real.png", rng, "real")
        for j in range(samples):
            _png(d / f"sample_{j}.png", rng, "synthetic")
        _png(d / "layout.png", rng)
        (d / "record.json").write_text(json.dumps({"index": 10 * i, "id": f"frame_{i}", "samples": [{}] * samples}))
    e = 0
    for i, n in enumerate(edits):
        for k in range(n):
            d = root / "edits" / f"{10 * i:06d}-{k}"
            d.mkdir(parents=True)
            _png(d / "source.png", rng)
            _png(d / "edited.png", rng)
            rec = {"index": 10 * i, "name": d.name, "id": f"frame_{i}", "edit": "remove:csp"}
            if anomalies:
                rec["anomaly"] = anomalies[e % len(anomalies)]
            (d / "record.json").write_text(json.dumps(rec))
            e += 1
    return root


@pytest.fixture
def run(tmp_path):
    return make_synthesis_run(tmp_path / "syn")


def _answers(path, key, pick):
    """An answers CSV as the page downloads it; ``pick(entry) -> choice``."""
    unit = key["unit"]
    lines = [f"study,reader,{unit},choice"] + [f"{key['study']},dr y,{e[unit]},{pick(e)}" for e in key[unit + "s"]]
    path.write_text("\n".join(lines) + "\n")
    return path


def _blocks(page: str, unit: str) -> list[str]:
    return re.findall(rf'<div class="{unit}" data-{unit}="\d+">.*?</div></div>', page)


def _blinded(page: str, key: dict, run):
    """Every block is the same markup but for its number and images; nothing of the key is in the page."""
    unit = key["unit"]
    blocks = _blocks(page, unit)
    assert len(blocks) == len(key[unit + "s"])
    shapes = {re.sub(r"\d+", "N", re.sub(r'src="data:image/png;base64,[^"]*"', "SRC", b)) for b in blocks}
    assert len(shapes) == 1, shapes
    refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', page)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)  # self-contained
    for e in key[unit + "s"]:
        for leak in (e.get("frame"), e.get("edit"), e.get("id"), e.get("spec"), e.get("anomaly")):
            assert leak is None or str(leak) not in page
    for leak in ("real.png", "sample_", "source.png", "edited.png", "000010", "Comment", "cf_side", '"answer"'):
        assert leak not in page


def test_real_vs_synthetic_page_is_blinded_and_scores(run, tmp_path, capsys):
    assert main(["reader-study", str(run), "--count", "6", "--seed", "1"]) == 0
    assert "6 frames" in capsys.readouterr().out
    key = json.loads((run / key_name("real-vs-synthetic")).read_text())
    items = key["items"]
    assert [e["answer"] for e in items].count("real") == 3 and len(items) == 6     # balanced
    assert len({e["frame"] for e in items}) == 6                                    # no frame twice
    page = (run / page_name("real-vs-synthetic")).read_text()
    assert page.count('class="item"') == 6 and key["study"] in page
    _blinded(page, key, run)
    assert not (run / KEY_NAME).exists()

    perfect = score_answers(run, _answers(tmp_path / "p.csv", key, lambda e: e["answer"]))
    assert (perfect["correct"], perfect["answered"], perfect["accuracy"]) == (6, 6, 1.0)
    assert perfect["fooled"]["k"] == 0 and perfect["fooled"]["n"] == 3
    assert perfect["p_value"] == pytest.approx(2 * 0.5 ** 6)
    everything_real = score_answers(run, _answers(tmp_path / "r.csv", key, lambda e: "Real"))  # case-insensitive
    assert everything_real["accuracy"] == 0.5 and everything_real["fooled"]["fraction"] == 1.0
    assert everything_real["p_value"] == pytest.approx(1.0)

    assert main(["reader-score", str(run), str(tmp_path / "p.csv")]) == 0
    out = capsys.readouterr().out
    assert "right in 6 of 6" in out and "synthetic frames called real: 0 of 3" in out


def test_chance_answers_score_near_half(tmp_path):
    run = make_synthesis_run(tmp_path / "big", layouts=60, samples=1, edits=(1,))
    key = make_synthesis_study(run, count=120, seed=0)
    coin = random.Random(5)
    s = score_answers(run, _answers(tmp_path / "c.csv", key, lambda e: coin.choice(["real", "synthetic"])))
    assert s["answered"] == 120 and abs(s["accuracy"] - 0.5) < 0.1
    assert s["ci_low"] < 0.5 < s["ci_high"] and s["p_value"] > 0.05


def test_edited_pairs_and_single_frames_with_anomalies(tmp_path, capsys):
    run = make_synthesis_run(tmp_path / "syn", edits=(2, 1, 2, 1), anomalies=("absent_csp", "big_th"))
    key = make_synthesis_study(run, task="edited", count=4, seed=3)
    assert key["unit"] == "pair" and len(key["pairs"]) == 4
    assert len({e["index"] for e in key["pairs"]}) == 4                 # each source frame once
    assert {e["answer"] for e in key["pairs"]} == {"A", "B"}            # both sides used
    assert {e["anomaly"] for e in key["pairs"]} <= {"absent_csp", "big_th"}
    page = (run / page_name("edited")).read_text()
    assert page.count('class="pair"') == 4
    _blinded(page, key, run)
    s = score_answers(run, _answers(tmp_path / "p.csv", key, lambda e: e["answer"]))
    assert s["accuracy"] == 1.0 and s["fooled"] is None
    assert sum(a["n"] for a in s["by_anomaly"].values()) == 4 and all(a["fraction"] == 1.0 for a in s["by_anomaly"].values())

    single = make_synthesis_study(run, task="edited", single=True, count=4, seed=3)
    items = single["items"]
    assert sorted(e["answer"] for e in items) == ["edited", "edited", "normal", "normal"]
    assert len({e["index"] for e in items}) == 4
    assert all(("anomaly" in e) == (e["answer"] == "edited") for e in items)  # the source frame shown has none
    _blinded((run / page_name("edited-single")).read_text(), single, run)
    wrong = score_answers(run, _answers(tmp_path / "w.csv", single, lambda e: "normal"))
    assert wrong["accuracy"] == 0.5 and wrong["fooled"]["fraction"] == 1.0
    assert all(a["k"] == 0 for a in wrong["by_anomaly"].values())
    # both studies stay in the run folder; each answers file scores against its own key
    assert score_answers(run, tmp_path / "p.csv")["task"] == "edited"
    assert main(["reader-score", str(run), str(tmp_path / "w.csv")]) == 0
    out = capsys.readouterr().out
    assert "edited frames called normal: 2 of 2" in out and re.search(r"(absent_csp|big_th): right in 0 of", out)


def test_without_anomaly_field_and_seeded(run):
    k1 = make_synthesis_study(run, task="edited", seed=7)
    assert len(k1["pairs"]) == 4 and not any("anomaly" in e for e in k1["pairs"])  # default: every source frame
    k2 = make_synthesis_study(run, task="edited", seed=7, force=True)
    assert k1["pairs"] == k2["pairs"] and k1["study"] == k2["study"]
    k3 = make_synthesis_study(run, task="edited", seed=8, force=True)
    assert k3["study"] != k1["study"]
    default = make_synthesis_study(run)
    assert len(default["items"]) == 8  # 4 real, 8 synthetic: 4 of each


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_inputs_exit_2_with_one_line(run, tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    cases = [
        (["reader-study", str(tmp_path / "plain")], "neither a counterfactual run"),
        (["reader-study", str(tmp_path / "absent")], "run folder not found"),
        (["reader-study", str(run), "--count", "10"], "at most 9"),
        (["reader-study", str(run), "--task", "edited", "--count", "5"], "at most 4"),
        (["reader-study", str(run), "--count", "0"], "at least 1"),
        (["reader-study", str(run), "--task", "anomaly"], "choose one of real-vs-synthetic, edited"),
        (["reader-study", str(run), "--single"], "--single is for --task edited"),
        (["reader-score", str(run), str(tmp_path / "a.csv")], "no reader-study key"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in _one_line(capsys)
    assert not list(run.glob("*reader-study*"))  # nothing written by the refusals

    key = make_synthesis_study(run, count=4)
    assert main(["reader-study", str(run), "--count", "4"]) == 2
    assert "already exists" in _one_line(capsys)
    good = _answers(tmp_path / "g.csv", key, lambda e: e["answer"])
    bad = {
        "other.csv": (good.read_text().replace(key["study"], "0123456789ab"), "another page or an older study"),
        "choice.csv": (good.read_text().replace(",real\n", ",A\n").replace(",synthetic\n", ",B\n"),
                       "must be real, synthetic or empty"),
        "extra.csv": (good.read_text() + f"{key['study']},x,9,real\n", "item 9 is not in the study (1..4)"),
        "twice.csv": (good.read_text() + good.read_text().splitlines()[1] + "\n", "answered twice"),
        "column.csv": (good.read_text().replace(",item,", ",pair,"), "expected columns study,item,choice"),
        "blank.csv": (re.sub(r",(real|synthetic)$", ",", good.read_text(), flags=re.M), "no item answered"),
    }
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        assert main(["reader-score", str(run), str(tmp_path / name)]) == 2, name
        assert message in _one_line(capsys), name


def test_run_without_real_frames_or_edits_is_refused(tmp_path):
    run = make_synthesis_run(tmp_path / "syn", real=False, edits=())
    with pytest.raises(UserError, match=r"0 real frames \(layouts/\*/real.png, written by 'diffice synthesize --test'"):
        make_synthesis_study(run)
    with pytest.raises(UserError, match="0 source frames with finished edits"):
        make_synthesis_study(run, task="edited")
    (run / "layouts" / "000000" / "record.json").write_text("{")
    with pytest.raises(UserError, match=r"000000/record.json: unreadable record"):
        make_synthesis_study(run)


def test_page_javascript_writes_answers_that_score(run, tmp_path):
    """The page's own script under node with a stub DOM: the single-frame CSV it downloads scores."""
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed")
    key = make_synthesis_study(run, count=4, seed=2)
    script = re.search(r"<script>(.*)</script>", (run / page_name("real-vs-synthetic")).read_text(), re.S).group(1)
    picks = {str(e["item"]): e["answer"] for e in key["items"][:-1]}  # the last frame stays unanswered
    stub = (
        f"const picks={json.dumps(picks)};"
        "const items=['1','2','3','4'].map(n=>({dataset:{item:n},querySelector:()=>picks[n]?{value:picks[n]}:null}));"
        "global.document={getElementById:id=>id==='reader'?{value:'Dr Y'}:{textContent:''},"
        "querySelectorAll:sel=>sel==='.item'?items:[],addEventListener:()=>{}};"
    )
    out = subprocess.run([node, "-e", stub + script + "process.stdout.write(answers().csv);"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.splitlines()[0] == "study,reader,item,choice"
    ans = tmp_path / "answers.csv"
    ans.write_text(out)
    s = score_answers(run, ans)
    assert (s["correct"], s["answered"], s["items"]) == (3, 3, 4) and s["readers"] == ["Dr Y"]


def test_page_and_key_are_written_together(run, capsys):
    """A key that cannot be written leaves no page (nor a temporary file): no page that cannot be scored."""
    (run / key_name("real-vs-synthetic")).mkdir()  # in the way of the key
    assert main(["reader-study", str(run), "--count", "2", "--force"]) == 2
    assert f"{run / key_name('real-vs-synthetic')}: Is a directory" in _one_line(capsys)
    assert not (run / page_name("real-vs-synthetic")).exists()
    assert sorted(p.name for p in run.iterdir()) == [key_name("real-vs-synthetic"), "edits", "layouts", "run.json"]
