"""One end-to-end run on tiny real models: train DDPM, segmenter, guide and oracle for two steps
each, then ``diffice counterfactuals`` through the CLI (checkpoints rebuilt from paths alone)."""

from __future__ import annotations

import json

import pytest

from diffice.cli import main
from tests.conftest import ROOT


def test_counterfactuals_command_on_tiny_real_models(tiny_overrides, tmp_path, capsys):
    pytest.importorskip("diffice.modules.ddpm")
    pytest.importorskip("diffice.commands.judges")
    from diffice.config import load_config
    from diffice.modules.ddpm import train_ddpm

    preset = str(ROOT / "configs/preset/tiny.yaml")
    steps = ["ddpm.max_steps=2", "segmenter.max_steps=2", "guide.max_steps=2", "oracle.max_steps=2",
             "trainer.val_every_n_steps=2", "trainer.checkpoint_every_n_steps=2", "data.num_workers=0",
             "features.perceptual=segmenter"]
    args = [preset, *tiny_overrides, *steps]
    train_ddpm(load_config([preset], [*tiny_overrides, *steps]))
    for cmd in ("train-segmenter", "train-classifier", "train-oracle"):
        assert main([cmd, *args]) == 0, cmd
    capsys.readouterr()

    out = tmp_path / "cf"
    cf_args = [*args, "cf.tau=2", "cf.iterations=2", "cf.limit=2", "cf.batch_size=2", f"cf.out={out}",
               "cf.lambda_c=[40.0]", "cf.split=all"]
    assert main(["counterfactuals", *cf_args, "--no-report"]) == 0
    text = capsys.readouterr().out
    assert "flip ratio" in text and "diff-ice: 2 frames" in text
    records = [json.loads(p.read_text()) for p in sorted(out.glob("frames/*/record.json"))]
    assert len(records) == 2 and all(r["iterations"] == 2 and r["nfe"] == 4 for r in records)
    assert all(0.0 <= r["p_cf"] <= 1.0 and 0.0 <= r["qs_cf"] <= 1.0 for r in records)
    assert (out / "results.csv").is_file() and (out / "config.yaml").is_file()

    # the same frames again: nothing to do, same records
    assert main(["counterfactuals", *cf_args, "--no-report"]) == 0
    assert [json.loads(p.read_text()) for p in sorted(out.glob("frames/*/record.json"))] == records

    # bad input: one line, exit 2
    assert main(["counterfactuals", *cf_args, "cf.tau=1"]) == 2
    assert "counterfactual run with other settings (cf.tau" in capsys.readouterr().err
    assert main(["counterfactuals", *cf_args, "data.image_size=[64,80]", f"cf.out={tmp_path / 'cf2'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "image size [32, 40]" in err and len(err.splitlines()) == 1
    assert main(["counterfactuals", *cf_args, f"cf.guide_ckpt={tmp_path}/runs/oracle/last.ckpt",
                 f"cf.out={tmp_path / 'cf3'}"]) == 2
    assert "is a oracle checkpoint, expected a classifier checkpoint" in capsys.readouterr().err
