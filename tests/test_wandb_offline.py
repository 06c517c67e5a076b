"""W&B offline: every picture diffice logs exists as a file in the run folder, every picture cell of a
table references one, and the artifact manifests name the checkpoints each run used.

Everything is checked from the offline run folders alone (``diffice.tracking.check_offline_run``
reads the run's ``.wandb`` transaction log, ``files/`` and its artifact staging folder).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest

from tests._fake_run import fake_eval_nets, make_fake_run
from tests.conftest import ROOT

PACK = ROOT / "models" / "demo"
TINY = str(ROOT / "configs/preset/tiny.yaml")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """W&B offline with every W&B folder in tmp_path (nothing in the home folder)."""
    pytest.importorskip("wandb")
    wb = tmp_path / "wandb-home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    for var, sub in (("WANDB_DIR", "dir"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
                     ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts")):
        monkeypatch.setenv(var, str(wb / sub))
    yield wb
    import wandb

    if wandb.run is not None:
        wandb.finish()


def _one_run(folder: Path) -> Path:
    from diffice.tracking import offline_runs

    runs = offline_runs(folder)
    assert len(runs) == 1, runs
    assert runs[0].name.startswith("offline-run-")
    return runs[0]


def _ref_path(entry: dict) -> Path:
    return Path(unquote(urlparse(entry["ref"]).path))


def _staged_outside(wb: Path) -> list[Path]:
    """Artifact files W&B staged in its default data folder (they belong in the run folder)."""
    return [p for p in (wb / "data").rglob("*") if p.is_file()]


def test_counterfactual_run_offline_keeps_pictures_and_lineage(offline, tmp_path):
    if not (PACK / "ddpm.ckpt").is_file():
        pytest.skip("model pack not present")
    from diffice.report import finalize_run
    from diffice.report.finalize import read_run_config
    from diffice.tracking import check_offline_run, read_offline_run

    run_dir = make_fake_run(tmp_path / "cf", n=4, iterations=2)
    cfg = read_run_config(run_dir, [f"cf.ddpm_ckpt={PACK / 'ddpm.ckpt'}", f"cf.guide_ckpt={PACK / 'guide.ckpt'}",
                                    f"cf.oracle_ckpt={PACK / 'oracle.ckpt'}", "wandb.group=test-pipeline"])
    finalize_run(run_dir, cfg, nets=fake_eval_nets(), progress=False)
    folder = _one_run(run_dir / "wandb")
    info = read_offline_run(folder)
    assert info["run"]["group"] == "test-pipeline" and info["run"]["job_type"] == "counterfactuals"

    res = check_offline_run(folder)
    assert res["problems"] == []
    arts = {a["name"]: a for a in info["artifacts"]}

    # the per-frame table: an artifact whose picture cells reference PNG entries staged in the run folder
    table_art = arts[f"cf-frames-{info['run']['id']}"]
    entries = {e["path"]: e for e in table_art["entries"]}
    tab = json.loads(Path(entries["frames.table.json"]["local_path"]).read_text())
    pictures = ["input", "seg_input", "iter1", "iter2", "cf", "seg_cf", "diff", "target"]
    assert set(pictures) <= set(table_art["metadata"]["picture_columns"])
    assert len(tab["data"]) == 4
    for row in tab["data"]:
        for col in pictures:
            cell = row[tab["columns"].index(col)]
            assert isinstance(cell, dict) and cell["_type"] == "image-file", (col, cell)
            staged = Path(entries[cell["path"]]["local_path"])
            assert folder in staged.parents and staged.read_bytes()[:4] == b"\x89PNG"
    assert not _staged_outside(offline)

    # beside it, each picture column as an image list in the run's files/media/images
    hist = {k: v for row in info["history"] for k, v in row.items()}
    for col in pictures:
        files = hist[f"cf/frames/{col}"]["filenames"]
        assert len(files) == 4 and all((folder / "files" / f).is_file() for f in files)
    history_table = json.loads((folder / "files" / hist["cf/frames"]["path"]).read_text())
    assert "Image" not in json.dumps(history_table["data"]) and "flipped" in history_table["columns"]
    assert res["images"] >= 4 * len(pictures) and res["tables"] >= 2  # distinct files (W&B names them by content)

    # lineage: the three checkpoints used, by reference (named with their MD5), not copied
    assert set(res["models_used"]) == {"ddpm", "classifier", "oracle"}
    for name, file in (("ddpm", "ddpm.ckpt"), ("classifier", "guide.ckpt"), ("oracle", "oracle.ckpt")):
        art = arts[name]
        assert art["type"] == "model" and art["used"]
        (entry,) = art["entries"]
        assert entry["path"] == file and _ref_path(entry) == (PACK / file).resolve() and entry["digest"]
        assert art["metadata"]["kind"] == name and art["metadata"]["steps"] > 0 and art["metadata"]["config_digest"]
    assert arts["data-phantom"]["used"] and arts["data-phantom"]["type"] == "dataset"
    out = arts["counterfactuals-diffice-diff-ice"]
    assert out["type"] == "counterfactuals" and not out["used"]
    assert {"results.csv", "metrics.json", "report.html"} <= {e["path"] for e in out["entries"]}
    assert sum(e["path"].startswith("frames/") for e in out["entries"]) >= 4 * 8


def test_check_finds_the_offline_table_loss(offline, tmp_path):
    """The known loss (wandb#4611): a table with pictures logged with run.log offline keeps the
    word "Image"; the check reports it, and log_picture_table's artifact keeps the pictures."""
    import wandb

    from diffice.tracking import check_offline_run, finish_run, log_picture_table

    run = wandb.init(project="t", dir=str(tmp_path), mode="offline")
    img = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    run.log({"plain": wandb.Table(columns=["i", "pic"], data=[[0, wandb.Image(img)]])})
    log_picture_table(run, "kept", ["i", "pic"], [[0, img], [1, None]])
    finish_run(run)  # run.finish() alone may return before the log is flushed
    res = check_offline_run(_one_run(tmp_path / "wandb"))
    assert len(res["problems"]) == 1 and "plain" in res["problems"][0] and "'Image'" in res["problems"][0]


@pytest.mark.slow
def test_training_stages_log_pictures_and_checkpoints(offline, tmp_path, capsys):
    from diffice.cli import main
    from diffice.tracking import check_offline_run, read_offline_run

    runs = tmp_path / "runs"
    ov = [f"paths.runs={runs}", "data.image_size=[32,40]", "data.batch_size=4", "data.phantom.count=24",
          "data.phantom.sp_fraction=0.4", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.progress_bar=false",
          "trainer.log_every_n_steps=1", "trainer.val_every_n_steps=2", "trainer.checkpoint_every_n_steps=2",
          "wandb.mode=offline", "wandb.group=g1", "segmenter.encoder=tu-mobilenetv3_small_050"]
    assert main(["train-segmenter", TINY, *ov, "segmenter.max_steps=2"]) == 0
    assert main(["train-classifier", TINY, *ov, "guide.max_steps=2"]) == 0
    seg, cls = _one_run(runs / "segmenter" / "wandb"), _one_run(runs / "classifier" / "wandb")
    found = {}
    for stage, folder in (("segmenter", seg), ("classifier", cls)):
        info, res = read_offline_run(folder), check_offline_run(folder)
        assert res["problems"] == []
        assert info["run"]["group"] == "g1" and info["run"]["job_type"] == f"train-{stage}"
        assert res["images"] >= 1  # segmentation overlays / confusion matrix, as files
        (model,) = [a for a in info["artifacts"] if a["type"] == "model" and not a["used"]]
        (entry,) = model["entries"]
        assert model["name"] == stage and _ref_path(entry) == (runs / stage / "last.ckpt").resolve()
        assert model["metadata"]["steps"] == 2
        found[stage] = info
    used = [a for a in found["classifier"]["artifacts"] if a["used"] and a["type"] == "model"]
    logged = [a for a in found["segmenter"]["artifacts"] if a["type"] == "model"]
    assert [a["name"] for a in used] == ["segmenter"] and used[0]["digest"] == logged[0]["digest"]
    assert not _staged_outside(offline)
    assert main(["wandb-check", str(runs)]) == 0
    assert "2 runs:" in capsys.readouterr().out


def test_disabled_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    from diffice.report.finalize import finalize_run

    run_dir = make_fake_run(tmp_path / "cf", n=2)
    finalize_run(run_dir, nets=None, progress=False)
    assert not (run_dir / "wandb").exists()


def test_pipeline_group(monkeypatch):
    from diffice.experiments.spec import pipeline_group

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    words = pipeline_group([TINY], "demo")
    assert words[0] == TINY and words[1].startswith("wandb.group=demo-")
    assert pipeline_group([TINY, "wandb.group=mine"], "demo") == [TINY, "wandb.group=mine"]
    monkeypatch.setenv("WANDB_RUN_GROUP", "env-group")
    assert pipeline_group([TINY], "demo") == [TINY]
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("WANDB_RUN_GROUP")
    assert pipeline_group([TINY], "demo") == [TINY]


def test_wandb_check_user_errors(tmp_path, capsys):
    from diffice.cli import main

    assert main(["wandb-check", str(tmp_path / "nope")]) == 2
    assert main(["wandb-check", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not found" in err[0] and "no W&B run folders" in err[1]


def test_finish_run_returns_with_a_complete_log(offline, tmp_path):
    """W&B flushes an offline run's transaction log when its service closes the stream, after
    ``run.finish()`` has returned (one full-suite run in four read a log without its last
    artifact); ``finish_run`` returns only once the log holds the exit record."""
    import wandb

    from diffice.tracking import finish_run, has_exit_record, read_offline_run

    ref = tmp_path / "out.txt"
    ref.write_text("x")
    for i in range(5):
        run = wandb.init(project="t", dir=str(tmp_path / f"r{i}"), mode="offline")
        run.log({"a": i})
        art = wandb.Artifact("outputs", type="counterfactuals")
        art.add_reference(ref.as_uri(), name="out.txt", checksum=True)
        run.log_artifact(art)
        finish_run(run)
        folder = _one_run(tmp_path / f"r{i}" / "wandb")
        assert has_exit_record(next(folder.glob("run-*.wandb")))
        assert [a["name"] for a in read_offline_run(folder)["artifacts"]] == ["outputs"], i


def test_exit_record_absent_from_a_partial_log(tmp_path):
    pytest.importorskip("wandb")
    from diffice.tracking import has_exit_record, wait_for_exit_record

    log = tmp_path / "run-x.wandb"
    assert not has_exit_record(log)  # not written yet
    log.write_bytes(b":W&B")  # only part of the header
    assert not has_exit_record(log)
    assert not wait_for_exit_record(log, timeout=0.05)
