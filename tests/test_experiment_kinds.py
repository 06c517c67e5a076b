"""``diffice experiment`` end to end for the counterfactual and synthesis kinds, on the shipped pack
(one frame, one layout): rows run through their kind, the table written, a rerun resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffice.cli import main

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / "models" / "demo"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (PACK / "PROVENANCE.json").is_file(), reason="no model pack")]


def _words(tmp_path) -> list[str]:
    return ["--preset", "demo", "--pack", str(PACK), f"paths.runs={tmp_path}", "wandb.mode=disabled",
            "trainer.progress_bar=false"]


def test_counterfactual_rows_make_a_table_and_resume(tmp_path, capsys):
    exp = tmp_path / "cf.yaml"
    exp.write_text("description: two rows of one frame\ncf: {limit: 1, iterations: 1, lambda_c: [30.0]}\n"
                   "runs:\n  Diff-ICE: {cf: {method: diff-ice}}\n  Control: {cf: {method: diff-ice, lambda_c: [0.0]}}\n"
                   "paired:\n  - [Control, Diff-ICE]\n")
    assert main(["experiment", str(exp), *_words(tmp_path)]) == 0
    root = tmp_path / "experiments" / "cf"
    table = (root / "table.md").read_text()
    assert "| Diff-ICE |" in table and "| Control |" in table and "**Control** vs **Diff-ICE**" in table
    stamp = json.loads((root / "diff-ice" / "run.json").read_text())
    assert stamp["kind"] == "counterfactuals" and stamp["settings"]["cf"]["method"] == "diff-ice"
    frames = sorted((root / "diff-ice" / "frames").iterdir())
    mtime = (frames[0] / "cf.png").stat().st_mtime
    capsys.readouterr()
    assert main(["experiment", str(exp), *_words(tmp_path), "--row", "Diff-ICE"]) == 0
    assert (frames[0] / "cf.png").stat().st_mtime == mtime  # a finished frame is kept


def test_synthesis_rows_make_a_table(tmp_path):
    exp = tmp_path / "syn.yaml"
    exp.write_text("kind: synthesis\nrealism: false\nsynthesis: {limit: 1, count: 1, edits: ['remove:csp']}\n"
                   "runs:\n  one stage: {synthesis: {two_stage: false}}\n")
    assert main(["experiment", str(exp), *_words(tmp_path)]) == 0
    root = tmp_path / "experiments" / "syn"
    assert "| one stage |" in (root / "table.md").read_text()
    assert json.loads((root / "one-stage" / "run.json").read_text())["kind"] == "synthesis"

