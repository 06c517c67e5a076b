"""What a reviewer reads first: page titles, sections only where they apply, KID cells that say
when they cannot be read as a distance."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from diffice.metrics.biometry import biometry_fields
from diffice.metrics.kid import kid_marks
from diffice.report import finalize_run
from diffice.report.html import report_title
from diffice.report.tables import markdown_report, table2_rows
from tests._fake_run import fake_eval_nets, make_fake_run

ORACLE = "the oracle's backbone (shares no weight with the guide)"


# ----------------------------------------------------------------------------- (a) titles


@pytest.mark.parametrize("run_dir, method, title", [
    ("runs/demo/counterfactuals", "diff-ice", "diffice — Diff-ICE counterfactuals: demo"),
    ("runs/counterfactuals", "diff-ice", "diffice — Diff-ICE counterfactuals"),
    ("runs/cf-dime", "dime", "diffice — DiME counterfactuals: cf-dime"),
    ("runs/experiments/table1/dime", "dime", "diffice — DiME counterfactuals: table1"),
])
def test_report_title_names_method_and_run(run_dir, method, title):
    assert report_title(Path(run_dir), method) == title


def test_demo_report_page_title(tmp_path):
    run = make_fake_run(tmp_path / "runs" / "demo" / "counterfactuals", n=4, iterations=1)
    finalize_run(run, nets=None, log_wandb=False, progress=False, frames=1)
    page = (run / "report.html").read_text()
    assert "<title>diffice — Diff-ICE counterfactuals: demo</title>" in page
    assert "<h1>diffice — Diff-ICE counterfactuals: demo</h1>" in page
    assert "counterfactuals: counterfactuals" not in page


def test_synthesis_report_page_title(tmp_path):
    from diffice.synthesis.report import synthesis_title, write_report

    out = tmp_path / "runs" / "demo" / "synthesis"
    out.mkdir(parents=True)
    page = write_report(out, {"ckpt": "models/demo/synthesis.ckpt"}, [], [], ["background", "head"]).read_text()
    assert "<title>diffice — FetalFlex synthesis: demo</title>" in page and "<title>diffice synthesis</title>" not in page
    assert synthesis_title(tmp_path / "runs" / "synthesis-samples") == "diffice — FetalFlex synthesis"


# ----------------------------------------------------------------------------- (b) sections that apply


def _add_to_records(run: Path, fields) -> None:
    for path in sorted(run.glob("frames/*/record.json")):
        rec = json.loads(path.read_text())
        rec.update(fields(rec))
        path.write_text(json.dumps(rec))


def _ellipse(h=32, w=40):
    import numpy as np

    yy, xx = np.mgrid[:h, :w]
    return (((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 <= 1).astype(np.int64)


def test_phantom_run_has_no_real_frame_section(tmp_path):
    """A phantom run's records carry the head Dice against its clean target (as the engine writes
    them: no pixel size, no annotated HC, no SonoNet) but no judge of real frames."""
    run = make_fake_run(tmp_path / "run", n=4, iterations=1)
    seg = _ellipse()
    _add_to_records(run, lambda r: biometry_fields(seg, seg, seg, None, float("nan")))
    finalize_run(run, nets=fake_eval_nets(), log_wandb=False, progress=False, frames=1)
    m = json.loads((run / "metrics.json").read_text())
    assert m["intervals"]["head_dice_target_cf"]["n"] == 4 and m["kid_target_n"] == 4  # still in metrics.json
    assert "Judges of real frames" not in (run / "report.html").read_text()
    assert "Judges of real frames" not in (run / "metrics.md").read_text()


def test_real_run_has_the_real_frame_section(tmp_path):
    run = make_fake_run(tmp_path / "run", n=4, iterations=1)
    seg = _ellipse()
    _add_to_records(run, lambda r: {**biometry_fields(seg, seg, seg, [0.5, 0.5], 150.0),
                                    "brain_input": r["index"] % 3 == 0, "brain_cf": True, "brain_target": True})
    finalize_run(run, nets=fake_eval_nets(), log_wandb=False, progress=False, frames=1)
    page = (run / "report.html").read_text()
    assert "Judges of real frames" in page and "SonoNet brain plane: counterfactual" in page
    assert "KID vs the clean targets" in page


# ----------------------------------------------------------------------------- (c) KID cells


def test_kid_marks():
    assert kid_marks("kid", 0.05, 0.01) == ""                       # a distance
    assert kid_marks("kid", 0.001, 0.004) == "†"                    # spread larger than the value
    assert kid_marks("kid_fsd", 0.05, 0.01, ORACLE) == "‡"          # not SonoNet's features
    assert kid_marks("kid_fsd", 316.3, 524.6, ORACLE) == "†‡"
    assert kid_marks("kid_fsd", 0.05, 0.01, "official SonoNet-16") == ""
    assert kid_marks("kid_fsd", 0.05, 0.01, None) == ""            # source not recorded: only the spread counts


def _run_metrics(features: str, kid_fsd: float, kid_fsd_std: float) -> dict:
    it = {"iteration": 1, "kid": 0.05, "kid_std": 0.01, "kid_fsd": kid_fsd, "kid_fsd_std": kid_fsd_std}
    return {"method": "diff-ice", "n_frames": 16, "iterations": 1, "kid": 0.05, "kid_std": 0.01,
            "kid_fsd": kid_fsd, "kid_fsd_std": kid_fsd_std, "fsd_features": features, "per_iteration": [it]}


def _kid_cells(markdown: str) -> list[str]:
    """Every cell of a markdown table under a column whose title says KID."""
    cells, header = [], None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        row = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = row
        elif not set(line) <= set("|- "):
            cells += [c for h, c in zip(header, row) if "KID" in h]
    return cells


def test_outlier_dominated_kid_is_marked_and_footnoted():
    """Table 2's "KID (FSD features) 316.3 ± 524.6" of the demo: marked, with the reason below the table."""
    m = _run_metrics(ORACLE, 316.3, 524.6)
    header, rows = table2_rows(m)
    cellv = rows[0][header.index("KID (FSD features) ↓")]
    assert cellv == "316.3000 ± 524.6000 †‡"
    assert rows[0][header.index("KID ↓")] == "0.0500 ± 0.0100"       # Inception KID: kept as it is
    text = markdown_report([m])
    assert "- † KID whose spread over subsets exceeds its value" in text
    assert f"- ‡ KID on FSD features that are not SonoNet's ({ORACLE})" in text
    for c in _kid_cells(text):                                         # the rule, on every KID cell
        value, std = (float(v) for v in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", c)[:2])
        assert std <= 10 * abs(value) or "†" in c, c


def test_kid_on_sononet_features_is_unmarked():
    text = markdown_report([_run_metrics("official SonoNet-16", 0.05, 0.01)])
    assert "†" not in text and "‡" not in text


def test_marked_kid_in_the_html_report_and_the_old_metrics_json(tmp_path):
    """A run's page footnotes a marked KID; a metrics.json written before ``fsd_features`` existed
    still gives the feature source through its note."""
    from diffice.report.tables import fsd_features

    old = {"notes": [f"FSD and SonoSim use features from: {ORACLE} (not the official SonoNet: not comparable "
                     "with other projects' FSD / SonoSim); perceptual loss network: segmenter"]}
    assert fsd_features(old).startswith("the oracle's backbone")
    run = make_fake_run(tmp_path / "run", n=4, iterations=2)
    finalize_run(run, nets=fake_eval_nets(), log_wandb=False, progress=False, frames=1)
    m = json.loads((run / "metrics.json").read_text())
    assert m["fsd_features"] is None  # the stand-in networks name no source
    from diffice.report.html import report_html
    from diffice.report.records import load_records

    m.update(kid_fsd=316.3, kid_fsd_std=524.6, fsd_features=ORACLE)
    page = report_html(m, load_records(run), [], "t", {}, frames=1)
    assert "316.3000 ± 524.6000 †‡" in page and "‡ KID on FSD features that are not SonoNet" in page


def test_synthesis_table_marks_noisy_kid():
    from diffice.synthesis.tables import synthesis_table

    m = {"kid": 0.12, "kid_std": 0.017, "kid_floor": 0.0001, "kid_floor_std": 0.004,
         "kid_fsd": 0.3, "kid_fsd_std": 0.05, "fsd_features": ORACLE}
    text = synthesis_table([("anchor", m)])
    assert "0.1200 ± 0.0170 |" in text and "KID real vs real 0.0001 ± 0.0040 †" in text
    assert "0.3000 ± 0.0500 ‡" in text and "† KID whose spread" in text and "‡ KID on FSD features" in text


def test_realism_summary_marks_noisy_kid():
    from diffice.metrics.realism import format_report

    res = {"a": {"set": "A"}, "b": {"set": "B"}, "fid": None, "histogram_emd": 1.0, "kid": 0.0002, "kid_std": 0.004}
    lines = format_report(res)
    assert any(line.startswith("KID (Inception") and line.endswith("0.0002 ± 0.0040 †") for line in lines)
    assert lines[-1].startswith("† KID whose spread")
    assert not any("†" in line for line in format_report(dict(res, kid=0.05)))
