"""Shared fixtures: tiny configs on CPU, temporary run folders, W&B disabled, one thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
# CPU DDP tests use gloo on the loopback interface (some hosts have no routable default)
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config):
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def one_thread():
    """One torch thread (tiny models on a shared 2-core machine run faster so); restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    """key=value overrides that shrink any config to a CPU test: 32x40 frames, few steps."""
    return [
        f"paths.runs={tmp_path / 'runs'}",
        "data.image_size=[32,40]",
        "data.batch_size=4",
        "data.phantom.count=32",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1",
        "wandb.mode=disabled",
        "unet.model_channels=16",
        "unet.channel_mult=[1,2]",
        "unet.num_res_blocks=1",
        "unet.attention_resolutions=[]",
        "unet.num_head_channels=16",
        "diffusion.steps=100",
        "diffusion.timestep_respacing='20'",
        "cf.respacing='20'",
        "cf.tau=5",
        "cf.iterations=2",
        "cf.batch_size=4",
    ]


@pytest.fixture
def tiny_cfg(tiny_overrides):
    from diffice.config import load_config

    return load_config([ROOT / "configs/preset/tiny.yaml"], tiny_overrides)


@pytest.fixture
def hc18_root() -> Path:
    root = SHARED_DATA / "hc18"
    if not (root / "training_set").is_dir():
        pytest.skip("HC18 data not present in ../shared/data/hc18")
    return root


@pytest.fixture
def sononet_dir() -> Path:
    root = SHARED_DATA / "sononet"
    if not (root / "SonoNet16.npz").is_file():
        pytest.skip("SonoNet weights not present in ../shared/data/sononet")
    return root
