"""Untrusted files and faults (issue 12): no code runs from a checkpoint, non-finite weights are
refused, OS errors are one line, nothing is left half-written, nothing reaches the network."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffice.cli import main
from diffice.config import load_config, to_dict
from tests.conftest import ROOT

TINY = str(ROOT / "configs/preset/tiny.yaml")
FAST = ["segmenter.encoder=tu-mobilenetv3_small_050", "oracle.encoder=tu-mobilenetv3_small_050",
        "data.num_workers=0", "features.perceptual=segmenter", "cf.split=all", "cf.limit=1", "cf.batch_size=1",
        "cf.tau=2", "cf.iterations=1", "cf.lambda_c=[10.0]", "ddpm.sample_every_n_steps=0"]

pytestmark = pytest.mark.usefixtures("one_thread")


class Payload:
    """Unpickling this runs a shell command (what a crafted checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _save_module(cfg, kind: str, path: Path, **extra) -> Path:
    from diffice.modules.common import module_class

    torch.manual_seed(0)
    module = module_class(kind)(cfg, load_pretrained=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "global_step": 2, "epoch": 0,
                "diffice": {"kind": kind, "config": to_dict(cfg), "version": "0.1.0"}, **extra}, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Checkpoints of each kind in diffice's format (untrained weights: built, not trained)."""
    root = tmp_path_factory.mktemp("models")
    words = [f"paths.runs={root}/runs", "data.image_size=[32,40]", "data.batch_size=4", "data.phantom.count=24",
             "trainer.accelerator=cpu", "trainer.devices=1", "trainer.progress_bar=false", "wandb.mode=disabled",
             "unet.model_channels=16", "unet.channel_mult=[1,2]", "unet.num_res_blocks=1", "unet.attention_resolutions=[]",
             "unet.num_head_channels=16", "diffusion.steps=100", "diffusion.timestep_respacing='20'", "cf.respacing='20'",
             *FAST]
    cfg = load_config([TINY], words)
    paths = {kind: _save_module(cfg, kind, root / kind / "last.ckpt") for kind in ("ddpm", "segmenter", "classifier", "oracle")}
    words += [f"cf.ddpm_ckpt={paths['ddpm']}", f"cf.guide_ckpt={paths['classifier']}", f"cf.oracle_ckpt={paths['oracle']}",
              f"guide.segmenter_ckpt={paths['segmenter']}"]
    return {"root": root, "words": words, "cfg": cfg, **paths}


def _evil(models, kind: str | None, path: Path, marker: Path) -> Path:
    """A real diffice checkpoint of ``kind`` (a plain state dict if None) with the payload added."""
    if kind is None:
        import timm

        state = timm.create_model("resnet50", pretrained=False, features_only=True).state_dict()
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({**state, "payload": Payload(marker)}, path)
        return path
    return _save_module(models["cfg"], kind, path, payload=Payload(marker))


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# every command / key that reads a checkpoint or weight file, with the kind of file it expects
CASES = {
    "counterfactuals cf.ddpm_ckpt": ("ddpm", lambda m, e, t: ["counterfactuals", TINY, *m["words"], f"cf.ddpm_ckpt={e}", f"cf.out={t}/cf"]),
    "counterfactuals cf.guide_ckpt": ("classifier", lambda m, e, t: ["counterfactuals", TINY, *m["words"], f"cf.guide_ckpt={e}", f"cf.out={t}/cf"]),
    "counterfactuals cf.oracle_ckpt": ("oracle", lambda m, e, t: ["counterfactuals", TINY, *m["words"], f"cf.oracle_ckpt={e}", f"cf.out={t}/cf"]),
    "counterfactuals features.perceptual_weights": (None, lambda m, e, t: [
        "counterfactuals", TINY, *m["words"], "features.perceptual=resnet50", f"features.perceptual_weights={e}", f"cf.out={t}/cf"]),
    "sample": ("ddpm", lambda m, e, t: ["sample", str(e), "--count", "1", "--out", f"{t}/samples", "--steps", "2"]),
    "evaluate cf.guide_ckpt": ("classifier", lambda m, e, t: ["evaluate", str(_fake_run(t)), f"cf.guide_ckpt={e}", "--no-wandb"]),
    "train-classifier guide.segmenter_ckpt": ("segmenter", lambda m, e, t: [
        "train-classifier", TINY, *m["words"], f"paths.runs={t}/runs", f"guide.segmenter_ckpt={e}"]),
    "train-segmenter segmenter.encoder_weights": (None, lambda m, e, t: [
        "train-segmenter", TINY, *m["words"], f"paths.runs={t}/runs", f"segmenter.encoder_weights={e}"]),
    "train-ddpm resumed": ("ddpm", lambda m, e, t: ["train-ddpm", TINY, *m["words"], f"paths.runs={t}/runs"]),
    "train-oracle resumed": ("oracle", lambda m, e, t: ["train-oracle", TINY, *m["words"], f"paths.runs={t}/runs"]),
    "demo": ("ddpm", lambda m, e, t: ["demo", "--scratch", *m["words"], f"paths.runs={t}/runs", f"cf.out={t}/cf"]),
    "demo --pack": ("ddpm", lambda m, e, t: ["demo", "--pack", str(_pack_around(e)), "--preset", TINY,
                                             *[w for w in m["words"] if not w.startswith("cf.")], f"cf.out={t}/cf"]),
    "synthesize": ("synthesis", lambda m, e, t: ["synthesize", str(e), TINY, *m["words"], "--test", "--out", f"{t}/syn"]),
    "train-synthesis resumed": ("synthesis", lambda m, e, t: ["train-synthesis", TINY, *m["words"], f"paths.runs={t}/runs"]),
}


def _pack_around(ddpm: Path) -> Path:
    """A model pack folder whose ddpm.ckpt is the crafted file (the DDPM is loaded first)."""
    for name in ("guide.ckpt", "oracle.ckpt", "synthesis.ckpt"):
        (ddpm.parent / name).write_bytes(b"")
    (ddpm.parent / "PROVENANCE.json").write_text("{}")
    return ddpm.parent
# where the crafted file goes: resumed training finds it as the run's last.ckpt
WHERE = {"train-ddpm resumed": "runs/ddpm/last.ckpt", "train-oracle resumed": "runs/oracle/last.ckpt",
         "train-synthesis resumed": "runs/synthesis/last.ckpt",
         "demo": "runs/ddpm/last.ckpt", "demo --pack": "pack/ddpm.ckpt"}


def _fake_run(tmp: Path) -> Path:
    from tests._fake_run import make_fake_run

    return make_fake_run(tmp / "run", n=2)


@pytest.mark.parametrize("case", list(CASES))
def test_crafted_checkpoint_runs_no_code(case, models, tmp_path, capsys):
    kind, argv = CASES[case]
    marker = tmp_path / "MARKER"
    evil = _evil(models, kind, tmp_path / WHERE.get(case, "evil/model.ckpt"), marker)
    code = main(argv(models, evil, tmp_path))
    err = _one_line(capsys)
    assert not marker.exists(), f"{case}: the checkpoint's code ran"
    assert code == 2, err
    assert str(evil) in err and "refused" in err and "posix.system" in err, err


def test_real_checkpoints_still_load(models):
    from diffice.modules.common import load_checkpoint
    from diffice.nets.weights import torch_load

    for kind in ("ddpm", "segmenter", "classifier", "oracle"):
        assert load_checkpoint(models[kind], kind).kind == kind
    assert torch_load(models["ddpm"], "missing", "checkpoint")["global_step"] == 2


@pytest.mark.parametrize("case", ["counterfactuals", "sample"])
def test_non_finite_weights_are_refused_naming_the_tensor(case, models, tmp_path, capsys):
    ckpt = torch.load(models["ddpm"], weights_only=True)
    ckpt["state_dict"]["ema_model.net.conv_in.weight"][0, 0, 0, 0] = float("nan")
    bad = tmp_path / "nan.ckpt"
    torch.save(ckpt, bad)
    argv = (["counterfactuals", TINY, *models["words"], f"cf.ddpm_ckpt={bad}", f"cf.out={tmp_path}/cf"] if case == "counterfactuals"
            else ["sample", str(bad), "--count", "1", "--out", str(tmp_path / "s"), "--steps", "2"])
    assert main(argv) == 2
    err = _one_line(capsys)
    assert f"{bad}: tensor 'ema_model.net.conv_in.weight' holds NaN values" in err
    assert not (tmp_path / "cf").exists() and not (tmp_path / "s").exists()


def test_mqd_is_undefined_without_finite_oracle_scores():
    from diffice.metrics.validity import OracleQuality

    m = OracleQuality()
    m.update([float("nan")] * 3, [float("nan")] * 3)
    assert torch.isnan(m.compute()["mqd"])
    m = OracleQuality()
    m.update([0.7, 0.8], [0.9, 0.9])  # scored, none below 0.5: the paper's formula gives 0
    assert float(m.compute()["mqd"]) == 0.0


def test_sample_takes_overrides_after_options(models, tmp_path):
    assert main(["sample", str(models["ddpm"]), "--count", "1", "--out", str(tmp_path / "s"), "--steps", "2",
                 "data.image_size=[32,40]"]) == 0
    assert (tmp_path / "s" / "000000.png").is_file()


# ----------------------------------------------------------------------------- OS errors


@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_output_under_a_file_is_one_line(models, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["counterfactuals", TINY, *models["words"], f"cf.out={tmp_path}/afile/cf"]) == 2
    err = _one_line(capsys)
    assert f"{tmp_path}/afile" in err and "Not a directory" in err
    assert main(["sample", str(models["ddpm"]), "--count", "1", "--out", f"{tmp_path}/afile/s", "--steps", "2"]) == 2
    assert "Not a directory" in _one_line(capsys)


@pytest.mark.parametrize("case", ["counterfactuals", "sample", "train-segmenter", "evaluate", "reader-study"])
def test_read_only_output_folder_is_one_line(case, models, tmp_path, capsys):
    ro = tmp_path / "ro"
    run = _fake_run(tmp_path) if case in ("evaluate", "reader-study") else None
    with _tmpfs(ro, "size=256k"):
        if run is not None:
            subprocess.run(["cp", "-r", str(run), str(ro / "run")], check=True)
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        argv = {
            "counterfactuals": ["counterfactuals", TINY, *models["words"], f"cf.out={ro}/cf"],
            "sample": ["sample", str(models["ddpm"]), "--count", "1", "--out", f"{ro}/s", "--steps", "2"],
            "train-segmenter": ["train-segmenter", TINY, *models["words"], f"paths.runs={ro}/runs", "segmenter.max_steps=1"],
            "evaluate": ["evaluate", f"{ro}/run", "--no-images", "--no-wandb"],
            "reader-study": ["reader-study", f"{ro}/run", "--pairs", "1"],
        }[case]
        code = main(argv)
        err = _one_line(capsys)
    assert code == 2, err
    assert str(ro) in err and "Read-only file system" in err and ".tmp" not in err, err


def test_disk_full_during_training_leaves_no_partial_checkpoint(models, tmp_path, capsys):
    full = tmp_path / "full"
    with _tmpfs(full, "size=128k"):
        code = main(["train-ddpm", TINY, *models["words"], f"paths.runs={full}", "ddpm.max_steps=1",
                     "trainer.val_every_n_steps=100"])
        err = _one_line(capsys)
        left = sorted(p.name for p in (full / "ddpm").iterdir())
    assert code == 2, err
    assert f"{full}/ddpm/last.ckpt: cannot write the checkpoint (No space left on device)" in err
    assert not any(name.endswith(".tmp") for name in left), left


def test_disk_full_while_writing_a_frame_leaves_no_frame_folder(tmp_path):
    import numpy as np

    from diffice.runfolder import frame_dir, remove_unfinished, write_frame

    full = tmp_path / "full"
    big = np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)  # ~64 KB as PNG
    with _tmpfs(full, "size=96k"):
        with pytest.raises(OSError) as info:
            write_frame(full, {"index": 1}, {"input.png": big, "cf.png": big})
        assert Path(info.value.filename).parent == frame_dir(full, 1)  # names the frame's file
        assert sorted(p.name for p in (full / "frames").iterdir()) == []
    # a temporary folder left by a killed run is removed by the next run
    stale = tmp_path / "run" / "frames" / ".000002.tmp"
    stale.mkdir(parents=True)
    (stale / "input.png").write_bytes(b"x")
    assert remove_unfinished(tmp_path / "run") == 1 and not stale.exists()


def test_data_error_at_set_up_leaves_no_run_folder(models, tmp_path, capsys):
    code = main(["train-ddpm", TINY, *models["words"], f"paths.runs={tmp_path}/runs", "data.source=hc18",
                 f"data.root={tmp_path}/nowhere"])
    assert code == 2 and "nowhere" in _one_line(capsys)
    assert not (tmp_path / "runs" / "ddpm").exists()


# ----------------------------------------------------------------------------- network


def test_no_network_at_run_time(tmp_path):
    script = (
        "import socket, sys\n"
        "tried = []\n"
        "def refuse(*a, **k):\n"
        "    tried.append(repr(a[:2])); raise OSError('network blocked by the test')\n"
        "socket.socket.connect = socket.socket.connect_ex = refuse\n"
        "socket.create_connection = socket.getaddrinfo = refuse\n"
        "from diffice.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('TRIED', tried, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NO_ALBUMENTATIONS_UPDATE", "HF_HUB_OFFLINE")}
    r = subprocess.run([sys.executable, "-c", script, "data-check", TINY, "data.phantom.count=24", "data.image_size=[32,40]"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "TRIED []" in r.stderr, r.stderr[-2000:]
