"""Lightning's own ``Kind.load_from_checkpoint(path)`` rebuilds every model kind diffice trains
(issue 38): the hyperparameters are the resolved config as plain containers (the file still reads
with ``weights_only=True``) and ``load_pretrained=False`` (no other checkpoint is needed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from diffice.cli import main
from diffice.modules.common import load_checkpoint, module_class
from tests.conftest import ROOT

TINY = str(ROOT / "configs/preset/tiny.yaml")
STAGES = ("ddpm", "segmenter", "classifier", "oracle", "synthesis")


def _overrides(root: Path) -> list[str]:
    return [
        f"paths.runs={root}", "data.image_size=[32,40]", "data.batch_size=4", "data.phantom.count=40",
        "data.phantom.sp_fraction=0.3", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.progress_bar=false",
        "trainer.val_every_n_steps=100", "wandb.mode=disabled", "unet.model_channels=16", "unet.channel_mult=[1,2]",
        "unet.num_res_blocks=1", "unet.attention_resolutions=[]", "unet.num_head_channels=16", "diffusion.steps=100",
        "diffusion.timestep_respacing='5'", "ddpm.sample_every_n_steps=0", "synthesis.prealign_width=8",
        "segmenter.encoder=tu-mobilenetv3_small_050", "oracle.encoder=tu-mobilenetv3_small_050", "guide.calibrate=none",
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each kind trained 1-2 steps; the segmenter the guide was built on is then moved away."""
    root = tmp_path_factory.mktemp("hparams") / "runs"
    ov = _overrides(root)
    for argv in (["train-ddpm", "ddpm.max_steps=1"], ["train-segmenter", "segmenter.max_steps=1"],
                 ["train-classifier", "guide.max_steps=1"], ["train-oracle", "oracle.max_steps=1"],
                 ["train-synthesis", "synthesis.prealign_steps=1", "synthesis.max_steps=1"]):
        assert main([argv[0], TINY, *ov, *argv[1:]]) == 0, argv
    shutil.copytree(root / "segmenter", root.parent / "segmenter-kept")
    shutil.rmtree(root / "segmenter")  # load_from_checkpoint of the guide must not need it
    return root


def _plain(obj, where="hyper_parameters") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, str), f"{where}: key {k!r}"
            _plain(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _plain(v, f"{where}[{i}]")
    else:
        assert obj is None or isinstance(obj, bool | int | float | str), f"{where}: {type(obj).__name__}"


def _ckpt(runs: Path, stage: str) -> Path:
    return (runs.parent / "segmenter-kept" if stage == "segmenter" else runs / stage) / "last.ckpt"


@pytest.mark.parametrize("stage", STAGES)
def test_the_stored_hyperparameters_are_plain_and_safe(runs, stage):
    ckpt = torch.load(_ckpt(runs, stage), map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert set(hp) == {"cfg", "load_pretrained"} and hp["load_pretrained"] is False
    _plain(hp)
    assert hp["cfg"] == ckpt["diffice"]["config"]  # one config, the one load_checkpoint reads


@pytest.mark.parametrize("stage", STAGES)
def test_load_from_checkpoint_rebuilds_a_working_module(runs, stage):
    path = _ckpt(runs, stage)
    cls = module_class("classifier" if stage == "classifier" else stage)
    module = cls.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
    assert type(module) is cls and module.cfg.paths.runs == str(runs)
    assert module.hparams["load_pretrained"] is False
    ours = load_checkpoint(path, cls.kind)  # diffice's own loader: the same weights
    mine, theirs = module.state_dict(), ours.state_dict()
    assert mine.keys() == theirs.keys()
    for k in mine:
        assert torch.equal(mine[k], theirs[k]), k
    x = torch.rand(2, 1, 32, 40) * 2 - 1
    with torch.no_grad():
        if stage == "ddpm":
            out = module(x, torch.tensor([3, 50]))
            assert out.shape == (2, 2, 32, 40)
        elif stage == "synthesis":
            layout = torch.zeros(2, len(module.cfg.data.classes), 32, 40)
            out = module.model(x, torch.tensor([3, 50]), layout, torch.tensor([0, -1]), torch.tensor([20.0, float("nan")]))
            assert out.shape == (2, 2, 32, 40)
        elif stage == "segmenter":
            out = module(x)
            assert out.shape == (2, len(module.cfg.data.classes), 32, 40)
        elif stage == "classifier":
            out = module(x)
            assert out.shape == (2,)
        else:
            out = module(x)["qs_o"]
            assert out.shape[0] == 2
    assert all(torch.isfinite(v).all() for v in (out if isinstance(out, tuple) else (out,)))
