"""DDPMModule: the loss falls, EMA warm-up, resume after a kill, NaN stop, bf16 on CPU, checkpoints."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset

from diffice.config import load_config
from diffice.errors import UserError
from diffice.io import make_grid
from diffice.modules.common import load_checkpoint, read_checkpoint
from diffice.modules.ddpm import DDPMModule, load_ddpm, train_ddpm
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")


class Ellipses(Dataset):
    """Synthetic frames in [-1, 1]: a bright ellipse on a dark background; items from ``nan_from`` on are NaN."""

    def __init__(self, n: int, size=(32, 40), seed: int = 0, nan_from: int | None = None):
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size[0]), torch.linspace(-1, 1, size[1]), indexing="ij")
        self.frames = []
        for _ in range(n):
            cx, cy, a, b = (torch.rand(4, generator=g) * torch.tensor([0.4, 0.4, 0.4, 0.3]) + torch.tensor([-0.2, -0.2, 0.4, 0.3])).tolist()
            inside = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1
            self.frames.append(torch.where(inside, 0.6, -0.8).unsqueeze(0))
        self.nan_from = nan_from

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, i):
        x = self.frames[i]
        if self.nan_from is not None and i >= self.nan_from:
            x = x * float("nan")
        return {"image": x, "index": torch.tensor(i)}


class SynthData(L.LightningDataModule):
    def __init__(self, bs: int = 4, poison_after: int | None = None):
        super().__init__()
        nan_from = None if poison_after is None else poison_after * bs  # batches from `poison_after` on are NaN
        self.train, self.val, self.bs = Ellipses(16, nan_from=nan_from), Ellipses(4, seed=1), bs

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.bs, shuffle=False, drop_last=True)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=self.bs)


def _cfg(tiny_overrides, *extra):
    return load_config([ROOT / "configs/preset/tiny.yaml"], [*tiny_overrides, "ddpm.sample_every_n_steps=0", *extra])


def _fixed_batch_loss(module: DDPMModule, model: torch.nn.Module, x0: torch.Tensor) -> float:
    g = torch.Generator().manual_seed(123)
    t = torch.randint(0, module.diffusion.num_timesteps, (x0.shape[0],), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        return float(module.diffusion.training_losses(model, x0, t, noise)["mse"].mean())


def test_loss_falls_on_phantom_data(tiny_overrides):
    from diffice.data import DiffIceDataModule

    cfg = _cfg(tiny_overrides, "ddpm.max_steps=40", "ddpm.lr=2e-3", "ddpm.ema_decay=0.9", "data.augment=false",
               "trainer.checkpoint_every_n_steps=1000", "trainer.val_every_n_steps=1000")
    dm = DiffIceDataModule(cfg)
    x0 = torch.stack([dm.dataset("val")[i]["image"] for i in range(4)])
    fresh = DDPMModule(cfg)
    before = _fixed_batch_loss(fresh, fresh.model, x0)
    last = train_ddpm(cfg, dm, num_sanity_val_steps=0)
    trained = load_checkpoint(last, "ddpm")
    after = _fixed_batch_loss(trained, trained.model, x0)
    after_ema = _fixed_batch_loss(trained, trained.ema_model, x0)
    assert after < 0.6 * before, (before, after)
    assert after_ema < 0.8 * before, (before, after_ema)
    assert int(trained.ema_updates) == 40


def test_ema_warmup_decay():
    cfg = load_config([ROOT / "configs/preset/tiny.yaml"], ["unet.model_channels=8", "unet.num_head_channels=8"])
    m = DDPMModule(cfg)
    assert m.ema_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        for p in m.model.parameters():
            p.fill_(1.0)
        for p in m.ema_model.parameters():
            p.zero_()
    m.update_ema()
    assert all(torch.allclose(p, torch.full_like(p, 0.9)) for p in m.ema_model.parameters())
    m.ema_updates.fill_(10**6)
    assert m.ema_decay() == pytest.approx(cfg.ddpm.ema_decay)
    cfg.ddpm.ema_warmup = False
    m2 = DDPMModule(cfg)
    assert m2.ema_decay() == pytest.approx(0.9999)
    assert not any(p.requires_grad for p in m.ema_model.parameters())


class Kill(Callback):
    """Simulates a killed job: raise after ``at`` optimizer steps."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            raise RuntimeError("killed")


class Record(Callback):
    def on_train_start(self, trainer, pl_module):
        self.start_step = trainer.global_step
        self.ema = {k: v.clone() for k, v in pl_module.ema_model.state_dict().items()}
        self.ema_updates = int(pl_module.ema_updates)


def test_resume_after_interruption_continues_step_count_and_ema(tiny_overrides):
    cfg = _cfg(tiny_overrides, "ddpm.max_steps=5", "trainer.checkpoint_every_n_steps=2", "ddpm.ema_decay=0.5")
    with pytest.raises(RuntimeError, match="killed"):
        train_ddpm(cfg, SynthData(), callbacks=[Kill(3)], num_sanity_val_steps=0)
    saved = read_checkpoint(cfg.paths.runs + "/ddpm/last.ckpt", "ddpm")
    assert saved["global_step"] == 2
    saved_ema = {k[len("ema_model."):]: v for k, v in saved["state_dict"].items() if k.startswith("ema_model.")}
    model_w = saved["state_dict"]["model.net.conv_in.weight"]
    assert not torch.equal(saved_ema["net.conv_in.weight"], model_w)  # a real average, not a copy

    rec = Record()
    last = train_ddpm(cfg, SynthData(), callbacks=[rec], num_sanity_val_steps=0)
    assert rec.start_step == 2 and rec.ema_updates == 2
    assert all(torch.equal(rec.ema[k], saved_ema[k]) for k in saved_ema)
    final = read_checkpoint(last, "ddpm")
    assert final["global_step"] == 5
    assert int(final["state_dict"]["ema_updates"]) == 5
    # a finished run started again does nothing more
    train_ddpm(cfg, SynthData(), num_sanity_val_steps=0)
    assert read_checkpoint(last, "ddpm")["global_step"] == 5


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tiny_overrides):
    cfg = _cfg(tiny_overrides, "ddpm.max_steps=6", "trainer.checkpoint_every_n_steps=2")
    with pytest.raises(UserError, match=r"loss became nan at step 3") as info:
        train_ddpm(cfg, SynthData(poison_after=3), num_sanity_val_steps=0)
    assert "last good checkpoint" in str(info.value)
    ckpt = read_checkpoint(cfg.paths.runs + "/ddpm/last.ckpt", "ddpm")
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_a_nan_on_one_of_two_ddp_processes_ends_both_with_one_line(tmp_path):
    """strategy=ddp (Lightning's subprocess launcher, gloo): rank 1's data turn NaN at step 2; every
    process stops there with its line (none waits for the other's gradients until the 30-minute timeout)."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, str(ROOT / "tests/scripts/ddp_nan.py"), str(tmp_path / "runs")], env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("rank ")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert sorted(lines) == sorted([
        f"rank 1: ddpm: loss became nan at step 2; the last good checkpoint is kept in {tmp_path / 'runs' / 'ddpm'} "
        "(lower ddpm.lr or check the data)",
        f"rank 0: ddpm: loss became NaN or infinite on another process at step 2; the last good checkpoint is kept in "
        f"{tmp_path / 'runs' / 'ddpm'} (lower ddpm.lr or check the data)"]), proc.stderr[-2000:]
    ckpt = read_checkpoint(tmp_path / "runs" / "ddpm" / "last.ckpt", "ddpm")
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow  # two processes (~30 s)
def test_a_failed_checkpoint_write_on_process_zero_ends_both_ddp_processes(tmp_path):
    """strategy=ddp: rank zero alone writes checkpoints; its third write fails (a full disk), and the other
    process, waiting in the save's barrier, stops too, each with one line; the second checkpoint is kept."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, str(ROOT / "tests/scripts/ddp_nan.py"), str(tmp_path / "runs"), "disk-full"],
                          env=env, capture_output=True, text=True, timeout=300)
    last = tmp_path / "runs" / "ddpm" / "last.ckpt"
    lines = sorted(ln for ln in proc.stderr.splitlines() if ln.startswith("rank "))
    assert proc.returncode == 2 and lines == [
        f"rank 0: {last}: cannot write the checkpoint (No space left on device); the previous checkpoint is kept",
        f"rank 1: {last}: process 0 could not write the checkpoint; see its line"], proc.stderr[-2000:]
    assert read_checkpoint(last, "ddpm")["global_step"] == 2
    assert sorted(p.name for p in last.parent.iterdir()) == ["config.yaml", "last.ckpt", "logs"]  # no partial file


def test_a_failed_checkpoint_save_keeps_the_previous_file_and_is_one_line(tmp_path, monkeypatch):
    from diffice.modules.training import AtomicCheckpointIO

    io, final = AtomicCheckpointIO(), tmp_path / "run" / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, final)
    assert io.load_checkpoint(final)["global_step"] == 1

    def full(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("diffice.modules.training.os.replace", full)
    with pytest.raises(UserError, match=r"last.ckpt: cannot write the checkpoint \(No space left on device\); the previous checkpoint is kept"):
        io.save_checkpoint({"global_step": 2}, final)
    assert sorted(p.name for p in final.parent.iterdir()) == ["last.ckpt"]  # no partial file left
    assert io.load_checkpoint(final)["global_step"] == 1


def test_bf16_mixed_on_cpu(tiny_overrides):
    cfg = _cfg(tiny_overrides, "ddpm.max_steps=2", "trainer.precision=bf16-mixed", "ddpm.sample_every_n_steps=2",
               "ddpm.sample_count=2", "diffusion.timestep_respacing='4'", "trainer.val_every_n_steps=2")
    last = train_ddpm(cfg, SynthData(), num_sanity_val_steps=1)
    ckpt = read_checkpoint(last, "ddpm")
    assert ckpt["global_step"] == 2
    w = ckpt["state_dict"]["model.net.conv_in.weight"]
    assert w.dtype == torch.float32 and torch.isfinite(w).all()  # mixed precision keeps fp32 master weights
    grids = list((last.parent / "images").glob("ddpm_samples_*.png"))
    assert len(grids) == 1  # the EMA sample grid (CSV logger: saved as PNG)
    metrics = (last.parent / "logs" / "metrics.csv").read_text()
    assert "train/loss_q" in metrics and "val/loss" in metrics


def test_checkpoint_rebuilds_and_checks_frame_size(tiny_overrides):
    cfg = _cfg(tiny_overrides, "ddpm.max_steps=1")
    last = train_ddpm(cfg, SynthData(), num_sanity_val_steps=0)
    m = load_ddpm(last, cfg)
    assert isinstance(m, DDPMModule) and not m.training
    x = m.sample([0, 1], respacing="3", seed=5)
    assert x.shape == (2, 1, 32, 40) and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(m.sample([1], respacing="3", seed=5), x[1:], atol=1e-4, rtol=1e-4)  # per-frame seeding
    other = load_config([ROOT / "configs/preset/tiny.yaml"], [*tiny_overrides, "data.image_size=[64,80]"])
    with pytest.raises(UserError, match=r"data.image_size=\[32, 40\]"):
        load_ddpm(last, other)
    # resuming into the same run folder with another architecture is refused before training
    wider = _cfg(tiny_overrides, "ddpm.max_steps=2", "unet.model_channels=32", "unet.num_head_channels=32")
    with pytest.raises(UserError, match="unet.model_channels"):
        train_ddpm(wider, SynthData())
    with pytest.raises(UserError, match="expected a ddpm checkpoint"):
        torch.save({"diffice": {"kind": "segmenter", "config": {}}}, last.parent / "seg.ckpt")
        load_ddpm(last.parent / "seg.ckpt")


def test_make_grid_layout():
    import numpy as np

    frames = [np.full((4, 6), i, dtype=np.uint8) for i in range(5)]
    g = make_grid(frames, ncol=3, pad=1)
    assert g.shape == (2 * 5 + 1, 3 * 7 + 1)
    assert g[1, 1] == 0 and g[1, 8] == 1 and g[6, 1] == 3 and g[6, 15] == 255


@pytest.mark.slow
def test_two_process_ddp_training(tiny_overrides):
    """DDP from cfg.trainer: two CPU processes (gloo), one checkpoint with the EMA of both steps."""
    cfg = _cfg(tiny_overrides, "ddpm.max_steps=2", "trainer.strategy=ddp_spawn", "trainer.devices=2")
    last = train_ddpm(cfg, SynthData(bs=2), num_sanity_val_steps=0)
    ckpt = read_checkpoint(last, "ddpm")
    assert ckpt["global_step"] == 2 and int(ckpt["state_dict"]["ema_updates"]) == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


class CropSizes(Callback):
    """The frame sizes the denoiser sees in training, and whether coordinate channels came with them."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        net = pl_module.model.net
        if not getattr(self, "_hooked", False):
            net.register_forward_pre_hook(lambda m, args: self.seen.append(tuple(args[0].shape[1:])))
            self._hooked = True


def test_patch_training_crops_with_coordinates_and_samples_whole_frames(tiny_overrides):
    cfg = _cfg(tiny_overrides, "ddpm.max_steps=6", "ddpm.patch_size=[16,20]", "unet.coord_channels=true",
               "ddpm.full_frame_prob=0.5")
    seen = CropSizes()
    last = train_ddpm(cfg, SynthData(), callbacks=[seen], num_sanity_val_steps=0, limit_val_batches=0)
    train_shapes = seen.seen[:6]
    assert (3, 16, 20) in train_shapes and (3, 32, 40) in train_shapes  # patches and whole frames, 2 coordinate channels
    m = load_ddpm(last, cfg)
    x = m.sample([0], respacing="3", seed=1)
    assert x.shape == (1, 1, 32, 40) and torch.isfinite(x).all()
    # the patch's coordinate channels are the whole frame's at its place
    from diffice.nets.unet import frame_coords

    torch.manual_seed(0)
    cfg_p = _cfg(tiny_overrides, "ddpm.patch_size=[16,20]", "unet.coord_channels=true", "ddpm.full_frame_prob=0")
    mod = DDPMModule(cfg_p)
    x0 = frame_coords(2, 32, 40)[:, :1].clone()  # frames whose pixels are their own x coordinate
    crops, model = mod.training_patches(x0)
    assert crops.shape == (2, 1, 16, 20)
    torch.testing.assert_close(model.keywords["coords"][:, :1], crops)
    with pytest.raises(UserError, match="unet.coord_channels"):
        train_ddpm(_cfg(tiny_overrides, "ddpm.patch_size=[16,20]"), SynthData())
    with pytest.raises(UserError, match="ddpm.patch_size"):
        train_ddpm(_cfg(tiny_overrides, "ddpm.patch_size=[64,20]", "unet.coord_channels=true"), SynthData())


def test_init_ckpt_starts_a_new_run_from_ema_weights(tiny_overrides, tmp_path):
    first = train_ddpm(_cfg(tiny_overrides, "ddpm.max_steps=2"), SynthData(), num_sanity_val_steps=0)
    source = load_ddpm(first)
    cfg = _cfg(tiny_overrides, "ddpm.max_steps=1", f"paths.runs={tmp_path / 'second'}", f"ddpm.init_ckpt={first}",
               "ddpm.lr=0")
    rec = Record()
    train_ddpm(cfg, SynthData(), callbacks=[rec], num_sanity_val_steps=0)
    assert all(torch.equal(rec.ema[k], v) for k, v in source.ema_model.state_dict().items())
    # patch training continued from a whole-frame DDPM: the coordinate inputs join at zero weight, so the
    # widened UNet computes what the source did on whole frames
    wide = _cfg(tiny_overrides, "ddpm.max_steps=1", f"paths.runs={tmp_path / 'third'}", f"ddpm.init_ckpt={first}",
                "unet.coord_channels=true", "ddpm.patch_size=[16,20]", "ddpm.lr=0")
    rec = Record()
    widened = train_ddpm(wide, SynthData(), callbacks=[rec], num_sanity_val_steps=0)
    w = rec.ema["net.conv_in.weight"]
    assert w.shape[1] == source.ema_model.net.conv_in.weight.shape[1] + 2 and not w[:, -2:].any()
    x, t = torch.randn(2, 1, 32, 40, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 7])
    with torch.no_grad():
        assert torch.allclose(load_ddpm(widened).ema_model(x, t), source.ema_model(x, t), atol=1e-5)
    # ... but a grey UNet cannot start from a coordinate-channel one
    bad = _cfg(tiny_overrides, f"paths.runs={tmp_path / 'fourth'}", f"ddpm.init_ckpt={widened}")
    with pytest.raises(UserError, match="unet.coord_channels"):
        train_ddpm(bad, SynthData())
