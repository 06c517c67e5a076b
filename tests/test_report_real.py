"""Slow: the report on a real (tiny) counterfactual run — real Inception / guide features / oracle,
W&B offline; ``diffice evaluate --check`` reproduces the metrics from the files."""

from __future__ import annotations

import json

import pytest

from diffice.cli import main
from tests.conftest import ROOT


@pytest.mark.slow
def test_report_on_tiny_real_run(tiny_overrides, tmp_path, capsys, monkeypatch):
    pytest.importorskip("diffice.modules.ddpm")
    from diffice.config import load_config
    from diffice.modules.ddpm import train_ddpm

    preset = str(ROOT / "configs/preset/tiny.yaml")
    steps = ["ddpm.max_steps=2", "segmenter.max_steps=2", "guide.max_steps=2", "oracle.max_steps=2",
             "trainer.val_every_n_steps=2", "trainer.checkpoint_every_n_steps=2", "features.perceptual=segmenter"]
    args = [preset, *tiny_overrides, *steps]
    train_ddpm(load_config([preset], [*tiny_overrides, *steps]))
    for cmd in ("train-segmenter", "train-classifier", "train-oracle"):
        assert main([cmd, *args]) == 0, cmd
    out = tmp_path / "cf"
    cf_args = [*args, "cf.tau=2", "cf.iterations=2", "cf.limit=4", "cf.batch_size=2", f"cf.out={out}",
               "cf.lambda_c=[40.0]", "cf.split=all", "wandb.mode=offline"]
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    capsys.readouterr()
    assert main(["counterfactuals", *cf_args]) == 0
    text = capsys.readouterr().out
    assert "report:" in text
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_frames"] == 4 and len(m["per_iteration"]) == 2
    assert m["sonosim"] is not None and -1.0 <= m["sonosim"] <= 1.0
    assert any("SonoNet features from" in n for n in m["notes"])
    assert list(out.glob("wandb/offline-run-*")), "no offline W&B run written"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert main(["evaluate", str(out), "--check"]) == 0
    assert "reproduced" in capsys.readouterr().out
