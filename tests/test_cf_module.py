"""CounterfactualModule + prediction writer on tiny fakes: run folder, resume, DDP, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from diffice.config import load_config
from diffice.counterfactual.outputs import RUN_KIND, method_config
from diffice.errors import UserError
from diffice.modules.counterfactual import CounterfactualModule, FrameWriter, _check_size, run_counterfactuals
from diffice.runfolder import check_run_folder, read_records, read_stamp
from tests.cf_fakes import CONCEPTS, FakeDataModule, LoggingWriter, fake_components
from tests.conftest import ROOT


@pytest.fixture
def cfg(tiny_overrides, tmp_path):
    over = [*tiny_overrides, "cf.tau=3", "cf.iterations=2", "cf.batch_size=2", "cf.lambda_c=[40.0,80.0]",
            f"cf.out={tmp_path / 'cf'}"]
    return load_config([ROOT / "configs/preset/tiny.yaml"], over)


def frames_written(out):
    return sorted(int(p.parent.name) for p in (out / "frames").glob("*/record.json"))


def test_run_writes_the_contract_files(cfg):
    out, indices = run_counterfactuals(cfg, fake_components(), FakeDataModule(5))
    assert indices == [100, 101, 102, 103, 104] and frames_written(out) == indices
    d = out / "frames" / "000100"
    rec = json.loads((d / "record.json").read_text())
    for key in ("index", "id", "method", "lambda_c", "p_input", "p_cf", "p_iters", "flipped", "concepts_input",
                "concepts_cf", "qs_input", "qs_cf", "target_l1_input", "target_l1_cf", "nfe", "seconds", "iterations"):
        assert key in rec
    assert rec["id"] == "frame0" and rec["method"] == "diff-ice" and set(rec["concepts_cf"]) == set(CONCEPTS)
    assert rec["iterations"] == 2 and len(rec["p_iters"]) == 2 and rec["nfe"] >= 2 * 3
    names = {p.name for p in d.iterdir()}
    assert {"input.png", "iter1.png", "iter2.png", "cf.png", "seg_input.png", "seg_cf.png", "target.png"} <= names
    assert "target.png" not in {p.name for p in (out / "frames" / "000101").iterdir()}
    assert json.loads((out / "frames/000101/record.json").read_text())["target_l1_cf"] is None
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["index"]) for r in rows] == indices
    assert (out / "config.yaml").is_file()


def test_killed_run_resumes_without_loss_or_duplicates(cfg, monkeypatch):
    out = cfg.cf.out
    written = []
    real = FrameWriter.write_on_batch_end

    def crash_after_two_batches(self, trainer, pl_module, prediction, *args, **kw):
        if len(written) >= 4:
            raise RuntimeError("simulated crash")
        real(self, trainer, pl_module, prediction, *args, **kw)
        written.extend(f["record"]["index"] for f in prediction)

    monkeypatch.setattr(FrameWriter, "write_on_batch_end", crash_after_two_batches)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_counterfactuals(cfg, fake_components(), FakeDataModule(7))
    first = frames_written(Path(out))
    assert first == [100, 101, 102, 103] and written == first

    written.clear()
    monkeypatch.setattr(FrameWriter, "write_on_batch_end", lambda self, *a, **k: (real(self, *a, **k), written.extend(
        f["record"]["index"] for f in a[2])))
    before = {i: (Path(out) / f"frames/{i:06d}/record.json").read_text() for i in first}
    run_counterfactuals(cfg, fake_components(), FakeDataModule(7))
    assert written == [104, 105, 106]  # only the unfinished frames ran
    path = Path(out)
    assert frames_written(path) == list(range(100, 107))
    assert all((path / f"frames/{i:06d}/record.json").read_text() == before[i] for i in first)
    with open(path / "results.csv") as fh:
        assert [int(r["index"]) for r in csv.DictReader(fh)] == list(range(100, 107))

    # a fresh run of everything gives the same results as the resumed one (seeding per frame)
    fresh = cfg.copy()
    fresh.cf.out = str(path.parent / "fresh")
    fresh.cf.batch_size = 3
    run_counterfactuals(fresh, fake_components(), FakeDataModule(7))
    for a, b in zip(read_records(path), read_records(fresh.cf.out), strict=True):
        assert a["p_iters"] == pytest.approx(b["p_iters"], abs=1e-4) and a["lambda_c"] == b["lambda_c"]


def test_two_process_ddp_writes_every_frame_once(cfg):
    out = Path(cfg.cf.out)
    res = run_counterfactuals(
        cfg, fake_components(), FakeDataModule(5),
        strategy="ddp_spawn", devices=2, accelerator="cpu", callbacks=[LoggingWriter(out)],
    )
    assert res is not None  # the launching process is global zero after ddp_spawn
    lines = [line.split() for line in (out / "writes.log").read_text().splitlines()]
    written = sorted(int(idx) for _, _, idx in lines)
    assert written == [100, 101, 102, 103, 104]  # every frame, each exactly once
    assert {rank for _, rank, _ in lines} == {"0", "1"}  # both processes worked
    assert frames_written(out) == written
    with open(out / "results.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 5


def test_out_folder_of_another_configuration_is_refused(cfg):
    run_counterfactuals(cfg, fake_components(), FakeDataModule(2))
    other = cfg.copy()
    other.cf.tau = 2
    with pytest.raises(UserError, match=r"counterfactual run with other settings \(cf.tau"):
        run_counterfactuals(other, fake_components(), FakeDataModule(2))
    same = cfg.copy()
    same.cf.batch_size = 1  # outputs do not depend on batch size: the same run
    check_run_folder(same.cf.out, RUN_KIND, method_config(OmegaConf.to_container(same, resolve=True)))


def test_the_trainer_precision_is_stamped_and_a_true_half_precision_is_refused(cfg):
    out, _ = run_counterfactuals(cfg, fake_components(), FakeDataModule(2))
    assert read_stamp(out)["settings"]["precision"] == "32-true"
    mixed = cfg.copy()
    mixed.trainer.precision = "bf16-mixed"  # a resumed run cannot mix precisions
    with pytest.raises(UserError, match=r"other settings \(precision: '32-true' there, 'bf16-mixed' now\)"):
        run_counterfactuals(mixed, fake_components(), FakeDataModule(2))
    for value in ("16-true", "bf16-true", "64-true"):  # the networks' weights cast: refused before anything is written
        bad = cfg.copy()
        bad.trainer.precision = value
        bad.cf.out = str(Path(cfg.cf.out).parent / f"cf-{value}")
        with pytest.raises(UserError, match=rf"^trainer.precision: '{value}' is not one of 32-true, bf16-mixed, 16-mixed"):
            run_counterfactuals(bad, fake_components(), FakeDataModule(2))
        assert not Path(bad.cf.out).exists()


def test_trainer_deterministic_reaches_the_predict_trainer_and_keeps_the_cpus_bits(cfg, tmp_path):
    out, _ = run_counterfactuals(cfg, fake_components(), FakeDataModule(2))
    det = cfg.copy()
    det.trainer.deterministic = True  # any lightning.Trainer argument passes through
    det.cf.out = str(tmp_path / "deterministic")
    try:
        run_counterfactuals(det, fake_components(), FakeDataModule(2))
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    for index in (100, 101):
        for name in ("cf.png", "iter1.png"):
            a, b = (Path(o) / "frames" / f"{index:06d}" / name for o in (out, det.cf.out))
            assert a.read_bytes() == b.read_bytes()


def test_input_set_without_nsp_frames_is_refused(cfg):
    with pytest.raises(UserError, match="no NSP frame"):
        run_counterfactuals(cfg, fake_components(), FakeDataModule(3, labels=[1, 1, 1]))
    all_cfg = cfg.copy()
    all_cfg.cf.label = "all"
    with pytest.raises(UserError, match="no NSP frame"):
        run_counterfactuals(all_cfg, fake_components(), FakeDataModule(2, labels=[1, 1]))
    assert not (Path(cfg.cf.out) / "config.yaml").exists()  # nothing half-written


def test_bad_checkpoints_are_refused(cfg, tmp_path):
    bad = cfg.copy()
    bad.cf.ddpm_ckpt = str(tmp_path / "nope.ckpt")
    with pytest.raises(UserError, match="nope.ckpt: checkpoint not found"):
        CounterfactualModule(bad)
    wrong = tmp_path / "oracle.ckpt"
    torch.save({"diffice": {"kind": "oracle", "config": {}}, "state_dict": {}}, wrong)
    bad.cf.ddpm_ckpt = str(wrong)
    with pytest.raises(UserError, match="is a oracle checkpoint, expected a ddpm checkpoint"):
        CounterfactualModule(bad)


def test_models_at_another_image_size_are_refused(cfg):
    ck = cfg.copy()
    ck.data.image_size = [64, 80]
    with pytest.raises(UserError, match=r"image size \[64, 80\] but data.image_size is \[32, 40\]"):
        _check_size("runs/ddpm/last.ckpt", ck, cfg)
    _check_size("runs/ddpm/last.ckpt", cfg, cfg)


def test_tau_beyond_the_ddpms_trained_noise_levels_is_refused(cfg):
    from types import SimpleNamespace

    from diffice.diffusion import build_diffusion
    from diffice.modules.counterfactual import _check_noise_level

    ck = load_config([ROOT / "configs/preset/tiny.yaml"], ["diffusion.steps=1000", "ddpm.train_max_t=0.25"])
    ddpm = SimpleNamespace(cfg=ck, max_train_t=lambda: 250)  # trained on t < 250 of 1000
    run = ck.copy()
    run.cf.respacing = "100"
    d = build_diffusion(ck, respacing="100")  # keeps t = 0, 10, 20, ..., 232, 242, 252, ...
    run.cf.tau = 25  # starts at t = 242
    _check_noise_level("runs/ddpm/last.ckpt", ddpm, d, run)
    run.cf.tau = 26  # t = 252
    with pytest.raises(UserError, match=r"cf.tau: 26 of 100 starts at t = 252 of 1000, but runs/ddpm/last.ckpt "
                                        r"was trained only on t < 250 \(ddpm.train_max_t = 0.25\)"):
        _check_noise_level("runs/ddpm/last.ckpt", ddpm, d, run)


def test_ids_file_selects_frames_in_its_order(cfg, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("# frames a judge picked\nframe3\nframe1  # a comment\n\nframe3\n")
    cfg.cf.ids = str(ids)
    out, indices = run_counterfactuals(cfg, fake_components(), FakeDataModule(5))
    assert indices == [103, 101] and frames_written(out) == [101, 103]
    # the biometry fields are in every record (unknown pixel size: no HC), no SonoNet judge without its weights
    rec = json.loads((out / "frames/000101/record.json").read_text())
    assert rec["hc_cf_mm"] is None and "head_dice_target_cf" in rec and "p_brain_cf" not in rec
    bad = cfg.copy()
    ids.write_text("frame1\nnot-a-frame\n")
    with pytest.raises(UserError, match=r"cf.ids: .*ids.txt: 1 id\(s\) .* not-a-frame"):
        run_counterfactuals(bad, fake_components(), FakeDataModule(5))
    bad.cf.ids = str(tmp_path / "none.txt")
    with pytest.raises(UserError, match="cf.ids: .*none.txt: cannot be read"):
        run_counterfactuals(bad, fake_components(), FakeDataModule(5))
