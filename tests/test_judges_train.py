"""Training the judges on tiny phantom data through the CLI; checkpoints and their kinds."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch

from diffice.cli import main
from diffice.errors import UserError
from diffice.modules.common import load_checkpoint
from tests.conftest import ROOT

TINY = str(ROOT / "configs/preset/tiny.yaml")


def _overrides(runs) -> list[str]:
    return [
        f"paths.runs={runs}",
        "data.image_size=[32,40]",
        "data.batch_size=4",
        "data.phantom.count=40",
        "data.phantom.sp_fraction=0.3",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1",
        "trainer.val_every_n_steps=4",
        "trainer.checkpoint_every_n_steps=4",
        "wandb.mode=disabled",
        # small encoders keep the suite fast on 2 shared CPU cores
        "segmenter.encoder=tu-mobilenetv3_small_050",
        "oracle.encoder=tu-mobilenetv3_small_050",
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Train segmenter -> classifier -> oracle once for the whole module (a few steps each)."""
    root = tmp_path_factory.mktemp("judges") / "runs"
    ov = _overrides(root)
    assert main(["train-segmenter", TINY, *ov, "segmenter.max_steps=4"]) == 0
    assert main(["train-classifier", TINY, *ov, "guide.max_steps=4"]) == 0
    assert main(["train-oracle", TINY, *ov, "oracle.max_steps=4"]) == 0
    return root


def _train_losses(run) -> list[float]:
    with open(run / "logs" / "metrics.csv") as fh:
        return [float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")]


def test_segmenter_trains_and_reports_dice_per_class(runs):
    m = json.loads((runs / "segmenter" / "metrics.json").read_text())
    for split in ("val", "test"):
        assert {"dice_background", "dice_head", "dice_mean"} <= set(m[split])
        assert 0.0 <= m[split]["dice_head"] <= 1.0
    losses = _train_losses(runs / "segmenter")
    assert len(losses) == 4 and min(losses[1:]) < losses[0]
    assert list((runs / "segmenter" / "images").glob("val_overlay_*.png"))
    assert load_checkpoint(runs / "segmenter" / "last.ckpt", "segmenter").net(torch.zeros(1, 1, 32, 40)).shape == (1, 6, 32, 40)


def test_classifier_reports_and_rebuilds_from_its_own_checkpoint(runs, tmp_path):
    m = json.loads((runs / "classifier" / "metrics.json").read_text())
    for split in ("val", "test"):
        assert {"balanced_accuracy", "auroc", "sensitivity", "specificity"} <= set(m[split])
    assert list((runs / "classifier" / "images").glob("val_confusion_*.png"))
    ckpt = torch.load(runs / "classifier" / "last.ckpt", map_location="cpu", weights_only=False)
    assert float(ckpt["state_dict"]["pos_weight"]) > 1.0  # n_NSP / n_SP of the training split
    # guide.calibrate (default train+val): the balanced-accuracy threshold of the training and validation
    # frames is in the checkpoint, and the reported metrics are at it
    t = float(ckpt["state_dict"]["guide.threshold"])
    assert 0.0 < t < 1.0 and m["val"]["threshold"] == pytest.approx(t) and m["test"]["threshold"] == pytest.approx(t)
    assert (t == 0.5) == ("balanced_accuracy_at_0.5" not in m["test"])
    seg = load_checkpoint(runs / "segmenter" / "last.ckpt", "segmenter").net
    # rebuild with the segmenter checkpoint gone: the classifier checkpoint holds s too
    moved = tmp_path / "seg.ckpt"
    (runs / "segmenter" / "last.ckpt").rename(moved)
    try:
        guide = load_checkpoint(runs / "classifier" / "last.ckpt", "classifier").guide
    finally:
        moved.rename(runs / "segmenter" / "last.ckpt")
    # s stayed frozen during training: identical to the segmenter checkpoint
    for (k, a), b in zip(guide.segmenter.state_dict().items(), seg.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    x = (torch.rand(2, 1, 32, 40) * 2 - 1).requires_grad_(True)
    guide(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_oracle_reports_concept_errors_and_calibration(runs):
    m = json.loads((runs / "oracle" / "metrics.json").read_text())
    for c in ("qs_th", "qs_csp", "qs_fp", "qs_bone"):
        assert 0.0 <= m["val"][f"mae_{c}"] <= 1.0
        assert 0.0 <= m["val"][f"ece_{c}"] <= 1.0
    assert "ece_qs_o" in m["val"]
    assert list((runs / "oracle" / "images").glob("val_reliability_*.png"))
    oracle = load_checkpoint(runs / "oracle" / "last.ckpt", "oracle").oracle
    out = oracle(torch.zeros(1, 1, 32, 40))
    assert out["concepts"].shape == (1, 4) and 0 <= float(out["qs_o"].detach()) <= 1


def test_wrong_checkpoint_kind_is_refused_by_name(runs, capsys):
    with pytest.raises(UserError, match="is a segmenter checkpoint, expected a classifier checkpoint"):
        load_checkpoint(runs / "segmenter" / "last.ckpt", "classifier")
    with pytest.raises(UserError, match="is a classifier checkpoint, expected a oracle checkpoint"):
        load_checkpoint(runs / "classifier" / "last.ckpt", "oracle")
    ov = _overrides(runs)
    code = main(["train-classifier", TINY, *ov, f"guide.segmenter_ckpt={runs / 'oracle' / 'last.ckpt'}"])
    assert code == 2
    assert "is a oracle checkpoint, expected a segmenter checkpoint" in capsys.readouterr().err
    assert main(["train-classifier", TINY, *ov, "guide.calibrate=test"]) == 2  # refused before any training
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "guide.calibrate: 'test' is not one of none, val, train+val" in err[0]


def test_cli_exit_codes(tmp_path, capsys):
    ov = _overrides(tmp_path / "runs")
    assert main(["train-classifier", TINY, *ov]) == 2  # no segmenter trained yet
    assert "train the segmenter first" in capsys.readouterr().err
    assert main(["train-segmenter", TINY, *ov, "segmenter.encodr=x"]) == 2
    assert "segmenter.encodr" in capsys.readouterr().err
    assert main(["train-oracle", TINY, *ov, "data.concepts=[]"]) == 2
    assert "data.concepts" in capsys.readouterr().err
    assert main(["train-oracle", TINY, *ov, "oracle.qs_target=max", "oracle.max_steps=1"]) == 2
    assert "oracle.qs_target" in capsys.readouterr().err


def test_guide_from_official_sononet_weights(runs, tmp_path, sononet_dir):
    """guide.pretrained: l starts from the authors' SonoNet-16, the stages fine-tune at guide.backbone_lr."""
    from diffice.modules.classifier import ClassifierModule
    from diffice.nets.sononet import SonoNet

    out = tmp_path / "runs"
    (out / "segmenter").mkdir(parents=True)
    (out / "segmenter" / "last.ckpt").symlink_to(runs / "segmenter" / "last.ckpt")
    npz = sononet_dir / "SonoNet16.npz"
    ov = [*_overrides(out), "guide.max_steps=2", f"guide.pretrained={npz}", "guide.backbone_lr=1e-4"]
    assert main(["train-classifier", TINY, *ov]) == 0
    module = load_checkpoint(out / "classifier" / "last.ckpt", "classifier")
    guide = module.guide
    assert guide.standardize_image
    official = SonoNet.from_official(npz)
    w, w0 = guide.predictor.stages[2][0][0].weight, official.stages[2][0][0].weight
    assert (w - w0).abs().max() < 0.05 * w0.abs().max()  # fine-tuned from the official weights, not from scratch
    opt = ClassifierModule.configure_optimizers(module)
    assert sorted(g["lr"] for g in opt.param_groups) == [1e-4, 1e-3]


def test_guide_init_ckpt_continues_a_guide_with_its_own_segmenter(runs, tmp_path, capsys):
    """guide.init_ckpt: a new run starts from that guide's s and l (no segmenter run needed); another
    architecture is one line naming the key."""
    base = runs / "classifier" / "last.ckpt"
    out = tmp_path / "runs"  # no segmenter folder here: s comes from the guide
    ov = [*_overrides(out), "guide.max_steps=1", "guide.lr=1e-12", f"guide.init_ckpt={base}"]
    assert main(["train-classifier", TINY, *ov]) == 0
    assert "starts from the weights of" in capsys.readouterr().out
    theirs = dict(load_checkpoint(base, "classifier").guide.named_parameters())
    ours = dict(load_checkpoint(out / "classifier" / "last.ckpt", "classifier").guide.named_parameters())
    assert set(ours) == set(theirs)  # the weights (a train step moves BatchNorm statistics, not these at lr 1e-12)
    assert all(torch.allclose(ours[k].float(), theirs[k].float(), atol=1e-5) for k in theirs)
    assert main(["train-classifier", TINY, *_overrides(tmp_path / "other"), "guide.sononet=32", f"guide.init_ckpt={base}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "guide.init_ckpt has another architecture" in err[0]


JUDGES = ("segmenter", "classifier", "oracle")
TRAINER = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_checkpointing": False,
           "enable_model_summary": False}


def _assert_pooled(runs, tmp_path, validate_many) -> None:
    """Each judge's validation metrics from ``validate_many(kind, module, datamodule)`` equal one process's
    (4 validation frames: dealt to 3 processes, 2 each, two frames repeated by the sampler)."""
    import lightning as L

    from diffice.config import load_config
    from diffice.data import DiffIceDataModule

    dm = DiffIceDataModule(load_config([TINY], _overrides(runs)))
    assert len(dm.dataset("val")) == 4
    for kind in JUDGES:
        module = load_checkpoint(runs / kind / "last.ckpt", kind)
        one = L.Trainer(devices=1, default_root_dir=str(tmp_path), **TRAINER).validate(module, datamodule=dm, verbose=False)[0]
        many = validate_many(kind, module, dm)
        keys = [k for k in one if k != "val/loss"]
        assert keys and set(keys) <= set(many), (kind, sorted(one), sorted(many))
        for k in keys:
            assert many[k] == pytest.approx(one[k], abs=1e-5), (kind, k)


@pytest.mark.slow  # 9 spawned processes (~1 min); make test runs the strategy=ddp test below (one launch, ~25 s)
def test_validation_metrics_of_three_processes_are_the_pooled_ones_of_one(runs, monkeypatch, tmp_path):
    """DDP: every judge's validation metrics are computed once over every process's frames (each frame once,
    though the sampler pads the last round by repeating frames), so several processes log what one logs."""
    import lightning as L

    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")

    def spawned(kind, module, dm):
        trainer = L.Trainer(devices=3, strategy="ddp_spawn", default_root_dir=str(tmp_path), **TRAINER)
        return trainer.validate(module, datamodule=dm, verbose=False)[0]

    _assert_pooled(runs, tmp_path, spawned)


def test_validation_metrics_under_strategy_ddp_are_the_pooled_ones_of_one(runs, tmp_path):
    """strategy=ddp (Lightning's subprocess launcher, the way a multi-GPU node runs): three processes
    validate each judge and log what one process logs (frames pooled, each once)."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "GLOO_SOCKET_IFNAME": "lo"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, str(ROOT / "tests/scripts/ddp_validate.py"), str(runs)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("METRICS ")]
    three = json.loads(line[len("METRICS "):])
    _assert_pooled(runs, tmp_path, lambda kind, module, dm: three[kind])
