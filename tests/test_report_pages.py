"""What a reviewer reads first: page titles, sections only where they apply, KID cells that say
when they cannot be read as a distance."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffice.report import finalize_run
from diffice.report.html import report_title
from tests._fake_run import make_fake_run

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
