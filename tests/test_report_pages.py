"""What a reviewer reads first: page titles, sections only where they apply, KID cells that say
when they cannot be read as a distance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffice.metrics.biometry import biometry_fields
from diffice.report import finalize_run
from diffice.report.html import report_title
from tests._fake_run import fake_eval_nets, make_fake_run

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
