"""A killed and resumed training run trains exactly as an uninterrupted one (issue 12, item 6):
same data order (``ResumableSampler``), same per-step randomness, and ``metrics.csv`` keeps the
whole history without the rows the killed run logged after its last checkpoint."""

from __future__ import annotations

import csv

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from diffice.config import load_config
from diffice.data.datamodule import ResumableSampler
from diffice.modules.common import read_checkpoint
from diffice.modules.ddpm import train_ddpm
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")


class Kill(Callback):
    def __init__(self, at: int):
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            raise RuntimeError("killed")


def _cfg(tiny_overrides, runs):
    return load_config([ROOT / "configs/preset/tiny.yaml"], [
        *tiny_overrides, f"paths.runs={runs}", "ddpm.max_steps=7", "trainer.checkpoint_every_n_steps=3",
        "trainer.val_every_n_steps=100", "ddpm.sample_every_n_steps=0", "data.num_workers=0", "data.phantom.count=24",
        "ddpm.ema_decay=0.5"])


def _rows(runs) -> list[dict]:
    with open(runs / "ddpm" / "logs" / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("train/loss")]


def test_sampler_order_is_a_function_of_the_step():
    full = ResumableSampler(10, 3, seed=1)
    assert len(full) == 9 and full.batches == 3
    epoch0 = list(full)
    assert sorted(i for i, _ in epoch0) == sorted(full.order(0)[0][:9]) and len({i for i, _ in epoch0}) == 9
    mid = ResumableSampler(10, 3, seed=1, position=lambda: 4)  # epoch 1, one batch done
    assert list(mid) == list(zip(*full.order(1), strict=True))[3:9]
    assert full.order(0) != full.order(1)
    ranks = [set(i for i, _ in ResumableSampler(10, 2, seed=1, num_replicas=2, rank=r)) for r in (0, 1)]
    assert not ranks[0] & ranks[1]


def _fake_trainer(device: str, devices: int = 1, step: int = 0):
    from types import SimpleNamespace

    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), num_devices=devices,
                           global_step=step, world_size=1, global_rank=0, accumulate_grad_batches=1)


def test_loading_options_follow_the_device_and_leave_the_cpu_as_it_was(tiny_overrides, monkeypatch):
    from diffice.data import loader_options

    cfg = load_config([ROOT / "configs/preset/tiny.yaml"], tiny_overrides)
    assert cfg.data.num_workers is None  # the default: chosen by device
    cpu = {"num_workers": 0, "persistent_workers": False, "pin_memory": False}
    assert loader_options(cfg) == cpu and loader_options(cfg, _fake_trainer("cpu", 4)) == cpu
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert loader_options(cfg, _fake_trainer("cuda:0")) == {"num_workers": 4, "persistent_workers": True, "pin_memory": True}
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert loader_options(cfg, _fake_trainer("cuda:0", devices=4))["num_workers"] == 1  # the CPUs shared by 4 processes
    cfg.data.num_workers = 0  # a number given is kept
    assert loader_options(cfg, _fake_trainer("cuda:0")) == {"num_workers": 0, "persistent_workers": False, "pin_memory": True}


@pytest.mark.usefixtures("one_thread")
def test_worker_processes_change_neither_the_training_order_nor_its_augmentations(tiny_overrides):
    """The training batches (frames and augmentations) from a mid-epoch step are the same with two
    worker processes as without: order and augmentation seeds are the sampler's (seed, step)."""
    from diffice.data import DiffIceDataModule

    batches = {}
    for workers in (0, 2):
        cfg = load_config([ROOT / "configs/preset/tiny.yaml"], [*tiny_overrides, f"data.num_workers={workers}"])
        dm = DiffIceDataModule(cfg)
        dm.trainer = _fake_trainer("cpu", step=1)
        batches[workers] = [b for _, b in zip(range(3), dm.train_dataloader(), strict=False)]
    assert len(batches[0]) == 3
    for a, b in zip(batches[0], batches[2], strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_killed_and_resumed_run_equals_the_uninterrupted_one(tiny_overrides, tmp_path):
    whole = _cfg(tiny_overrides, tmp_path / "a")
    train_ddpm(whole, num_sanity_val_steps=0)

    cut = _cfg(tiny_overrides, tmp_path / "b")
    with pytest.raises(RuntimeError, match="killed"):
        train_ddpm(cut, callbacks=[Kill(5)], num_sanity_val_steps=0)  # last.ckpt at step 3, mid-epoch
    assert read_checkpoint(tmp_path / "b/ddpm/last.ckpt", "ddpm")["global_step"] == 3
    killed_rows = _rows(tmp_path / "b")
    train_ddpm(cut, num_sanity_val_steps=0)

    a = read_checkpoint(tmp_path / "a/ddpm/last.ckpt", "ddpm")
    b = read_checkpoint(tmp_path / "b/ddpm/last.ckpt", "ddpm")
    assert a["global_step"] == b["global_step"] == 7
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k  # EMA and trained weights bit-identical

    rows_a, rows_b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert "3" in [r["step"] for r in killed_rows]  # the killed run had logged past its checkpoint
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a]  # whole history, no duplicate
    assert [r["train/loss"] for r in rows_b] == [r["train/loss"] for r in rows_a]
