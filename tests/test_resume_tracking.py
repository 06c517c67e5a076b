"""A resumed training stage (issue 27): the same W&B run continues, no "previous log files will
be deleted" warning (the CSV history is kept), a bar that says which step training stops at;
and counterfactuals on a fresh clone use the shipped model pack."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from diffice.cli import main
from diffice.config import load_config
from diffice.modules.resume import RUN_ID_FILE, StepsProgressBar

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/preset/tiny.yaml")
PACK = ROOT / "models" / "demo"
FAST = ["segmenter.encoder=tu-mobilenetv3_small_050", "trainer.val_every_n_steps=2", "trainer.checkpoint_every_n_steps=2"]


def test_a_resumed_stage_continues_its_wandb_run(tmp_path, monkeypatch, tiny_overrides):
    pytest.importorskip("wandb")
    wb = tmp_path / "wandb-home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    for var, sub in (("WANDB_DIR", "dir"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
                     ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts")):
        monkeypatch.setenv(var, str(wb / sub))
    from diffice.tracking import offline_runs, read_offline_run

    ov = [o for o in tiny_overrides if not o.startswith("wandb.")] + ["wandb.mode=offline", *FAST]
    assert main(["train-segmenter", TINY, *ov, "segmenter.max_steps=2"]) == 0
    run = Path(load_config([TINY], ov).paths.runs) / "segmenter"
    first = (run / RUN_ID_FILE).read_text().strip()
    assert main(["train-segmenter", TINY, *ov, "segmenter.max_steps=4"]) == 0
    folders = offline_runs(run / "wandb")
    assert len(folders) == 2
    ids = {read_offline_run(f)["run"]["id"] for f in folders}
    assert ids == {first}  # both offline folders belong to the one run; `wandb sync` appends the second
    import wandb

    if wandb.run is not None:
        wandb.finish()


def test_resume_keeps_the_csv_history_without_lightnings_warning(tiny_overrides):
    tiny_overrides = [*tiny_overrides, *FAST]
    assert main(["train-segmenter", TINY, *tiny_overrides, "segmenter.max_steps=2"]) == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train-segmenter", TINY, *tiny_overrides, "segmenter.max_steps=4"]) == 0
    assert not [w for w in caught if "will be deleted" in str(w.message)], [str(w.message) for w in caught]
    run = Path(load_config([TINY], tiny_overrides).paths.runs) / "segmenter"
    steps = [line.split(",") for line in (run / "logs" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps  # the history of both runs is there


def test_the_bar_names_the_last_step_not_epoch_minus_two():
    bar = StepsProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=180)
    text = bar._get_train_description(3)
    assert "-2" not in text and "Epoch 3, to step 180" in text
    bar._trainer = SimpleNamespace(max_epochs=5, max_steps=-1)
    assert bar._get_train_description(1).startswith("Epoch 1/4")


@pytest.mark.skipif(not (PACK / "ddpm.ckpt").is_file(), reason="no model pack")
def test_counterfactuals_on_a_fresh_clone_use_the_shipped_pack(tmp_path, capsys):
    out = tmp_path / "cf"
    assert main(["counterfactuals", TINY, f"paths.runs={tmp_path / 'runs'}", f"cf.out={out}", "cf.limit=1", "data.phantom.count=40",
                 "cf.lambda_c=[30.0]", "wandb.mode=disabled", "trainer.progress_bar=false",
                 "cf.tau=3", "cf.iterations=1", "cf.net_batch=1", "--no-report"]) == 0  # which models, not what they make
    printed = capsys.readouterr().out
    assert "using the shipped model pack" in printed and "ddpm.ckpt, guide.ckpt, oracle.ckpt" in printed
    assert str(PACK / "ddpm.ckpt") in (out / "config.yaml").read_text()
    assert not (out / ".lock").exists()


def test_the_pack_is_not_used_for_another_frame_size_or_a_named_checkpoint(tmp_path):
    from diffice.experiments.pack import use_pack_if_untrained

    paper = load_config([ROOT / "configs/preset/paper.yaml"], [f"paths.runs={tmp_path}"])
    assert use_pack_if_untrained(paper) == [] and paper.cf.ddpm_ckpt == f"{tmp_path}/ddpm/last.ckpt"
    named = load_config([TINY], [f"paths.runs={tmp_path}", f"cf.ddpm_ckpt={tmp_path}/mine.ckpt"])
    assert use_pack_if_untrained(named) == []
    (tmp_path / "ddpm").mkdir()
    (tmp_path / "ddpm" / "last.ckpt").write_bytes(b"")
    trained = load_config([TINY], [f"paths.runs={tmp_path}"])
    assert use_pack_if_untrained(trained) == []
