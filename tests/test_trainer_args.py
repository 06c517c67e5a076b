"""Any ``trainer.*`` key that is a lightning.Trainer argument reaches the Trainer (issue 38):
gradient accumulation and a time limit on a tiny segmenter, on the CPU."""

from __future__ import annotations

import time

import pytest
import torch
from lightning.pytorch.callbacks import Callback, Timer

from diffice.config import load_config
from diffice.errors import UserError
from tests.conftest import ROOT

TINY = str(ROOT / "configs/preset/tiny.yaml")


def _cfg(runs, *extra: str):
    return load_config([TINY], [f"paths.runs={runs}", "wandb.mode=disabled", "trainer.progress_bar=false",
                                "data.phantom.count=40", "data.image_size=[32,40]", "data.batch_size=4",
                                "trainer.val_every_n_steps=100", "segmenter.encoder=tu-mobilenetv3_small_050", *extra])


class Batches(Callback):
    """Counts the batches trained and the optimizer step after each."""

    def __init__(self, sleep: float = 0.0):
        self.steps: list[int] = []
        self.frames: list[int] = []
        self.sleep = sleep

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(int(trainer.global_step))
        self.frames += [int(i) for i in batch["index"]]
        time.sleep(self.sleep)


def test_trainer_keys_reach_the_trainer(tmp_path):
    from diffice.modules.training import build_trainer

    cfg = _cfg(tmp_path, "trainer.accumulate_grad_batches=2", "trainer.max_time=00:00:00:30",
               "trainer.limit_val_batches=0.5", "trainer.deterministic=true")
    try:
        trainer = build_trainer(cfg, "segmenter", 10)
        assert torch.are_deterministic_algorithms_enabled()  # trainer.deterministic reached the Trainer
    finally:
        torch.use_deterministic_algorithms(False)  # a process-wide switch Lightning set
    assert trainer.accumulate_grad_batches == 2
    assert trainer.limit_val_batches == 0.5
    timer = [c for c in trainer.callbacks if isinstance(c, Timer)]
    assert len(timer) == 1 and timer[0]._duration == 30  # max_time makes Lightning's Timer
    cfg = _cfg(tmp_path, "trainer.max_time={minutes: 2}")
    timer = [c for c in build_trainer(cfg, "segmenter", 10).callbacks if isinstance(c, Timer)]
    assert timer[0]._duration == 120


def test_a_value_lightning_refuses_is_one_line(tmp_path):
    from diffice.modules.training import build_trainer

    with pytest.raises(UserError, match=r"^trainer: Lightning refused the Trainer arguments "
                                        r"trainer.max_time='soon' \(.*not a valid duration") as info:
        build_trainer(_cfg(tmp_path, "trainer.max_time=soon"), "segmenter", 10)
    assert "\n" not in str(info.value)


def test_training_honours_accumulate_grad_batches(tmp_path):
    """Two batches per optimizer step: 2 steps train 4 batches, the sampler's order continues
    across the steps (no batch trained twice), and the checkpoint is at step 2."""
    from diffice.data import DiffIceDataModule
    from diffice.modules.segmenter import SegmenterModule
    from diffice.modules.training import fit
    from diffice.nets.weights import read_checkpoint

    cfg = _cfg(tmp_path, "trainer.accumulate_grad_batches=2")
    seen = Batches()
    dm = DiffIceDataModule(cfg)
    last = fit(cfg, "segmenter", SegmenterModule(cfg), dm, 2, callbacks=[seen])
    assert seen.steps == [0, 1, 1, 2]
    assert len(seen.frames) == 16 and len(set(seen.frames)) == 16  # four different batches of 4
    assert read_checkpoint(last, "segmenter")["global_step"] == 2


def test_training_honours_max_time(tmp_path):
    """max_time stops a run long before max_steps; the checkpoint of where it stopped is written."""
    from diffice.data import DiffIceDataModule
    from diffice.modules.segmenter import SegmenterModule
    from diffice.modules.training import fit
    from diffice.nets.weights import read_checkpoint

    cfg = _cfg(tmp_path, "trainer.max_time={seconds: 1}")
    seen = Batches(sleep=0.6)
    last = fit(cfg, "segmenter", SegmenterModule(cfg), DiffIceDataModule(cfg), 200, callbacks=[seen])
    steps = read_checkpoint(last, "segmenter")["global_step"]
    assert 1 <= steps <= 3 and len(seen.steps) == steps


def test_the_resumed_order_counts_accumulated_batches():
    """A run resumed at optimizer step s with k batches per step starts at batch s·k of its epoch
    (Lightning steps at an epoch's end with the batches it has: 10 batches, k=3 -> 4 steps per epoch)."""
    from diffice.data.datamodule import ResumableSampler

    def order(step: int, k: int) -> list[int]:
        return [i for i, _ in ResumableSampler(40, 4, seed=3, position=lambda: step, accumulate=k)]

    full = order(0, 1)  # epoch 0, all 10 batches
    assert order(2, 2) == full[2 * 2 * 4:]
    assert order(3, 3) == full[3 * 3 * 4:]  # the last step of epoch 0: one batch
    assert order(4, 3) == order(10, 1)  # step 4 is the start of epoch 1


class Runaway(Callback):
    """Fails a run that trains far more batches than its steps need (instead of hanging)."""

    def __init__(self, most: int):
        self.most, self.seen = most, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen += 1
        if self.seen > self.most:
            raise AssertionError(f"{self.seen} batches trained by step {trainer.global_step}: the run does not end")


@pytest.mark.usefixtures("one_thread")
def test_a_killed_and_resumed_run_with_accumulation_equals_the_uninterrupted_one(tiny_overrides, tmp_path):
    """test_resume_exact's check with trainer.accumulate_grad_batches=2. Without the sampler counting
    the accumulated batches this run never ended (batches kept coming with the step stuck at 3)."""
    import torch

    from diffice.modules.common import read_checkpoint
    from diffice.modules.ddpm import train_ddpm
    from tests.test_resume_exact import Kill, _cfg, _rows

    def cfg(runs):
        c = _cfg(tiny_overrides, runs)
        c.trainer.accumulate_grad_batches = 2
        return c

    train_ddpm(cfg(tmp_path / "a"), callbacks=[Runaway(40)], num_sanity_val_steps=0)  # 7 steps: 14 batches
    cut = cfg(tmp_path / "b")
    with pytest.raises(RuntimeError, match="killed"):
        train_ddpm(cut, callbacks=[Kill(5), Runaway(40)], num_sanity_val_steps=0)
    assert read_checkpoint(tmp_path / "b/ddpm/last.ckpt", "ddpm")["global_step"] == 3
    train_ddpm(cut, callbacks=[Runaway(40)], num_sanity_val_steps=0)
    a = read_checkpoint(tmp_path / "a/ddpm/last.ckpt", "ddpm")
    b = read_checkpoint(tmp_path / "b/ddpm/last.ckpt", "ddpm")
    assert a["global_step"] == b["global_step"] == 7
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert [r["train/loss"] for r in _rows(tmp_path / "b")] == [r["train/loss"] for r in _rows(tmp_path / "a")]
