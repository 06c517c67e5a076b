"""bench/gpu_paper.py: its logic on the CPU at a shrunk size, the no-GPU line, the RESULTS.md block, rows written
as they finish, TF32 off in the fp32 rows, the default perceptual network, a GPU torch cannot use."""

from __future__ import annotations

import importlib.util
import json
import subprocess

import pytest
import torch

from diffice.config import load_config
from tests.conftest import ROOT


def _module():
    spec = importlib.util.spec_from_file_location("gpu_paper", ROOT / "bench" / "gpu_paper.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.usefixtures("one_thread")
def test_the_measurement_runs_at_a_shrunk_size_and_replaces_its_block(tmp_path, monkeypatch):
    gp = _module()
    results, rows = tmp_path / "RESULTS.md", tmp_path / "out" / "rows.jsonl"
    results.write_text("# Benchmark results\n\nkept text\n")
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    seen = []  # (TF32 flags) at every guided step
    real_step = gp.CounterfactualEngine._step_x0

    def step(self, *args):
        seen.append((self.s.autocast, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return real_step(self, *args)

    monkeypatch.setattr(gp.CounterfactualEngine, "_step_x0", step)
    assert gp.main(["--device", "cpu", "--shrink", "--steps", "1", "--no-compile", "--results", str(results),
                    "--rows", str(rows)]) == 0
    text = results.read_text()
    assert "kept text" in text and text.count(gp.BEGIN) == 1 and "| fp32 | no | off |" in text and "| bf16 | no |" in text
    assert "32x40" in text and "so far" not in text
    # the fp32 rows ran without TF32, the bf16 rows with PyTorch's settings, restored afterwards
    assert {s[1:] for s in seen if s[0] == "none"} == {(False, False)}
    assert {s[1:] for s in seen if s[0] == "bf16"} == {before}
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    # one JSON line per row, timing the perceptual network a counterfactual run uses by default
    lines = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [r["precision"] for r in lines] == ["fp32", "bf16"] and [r["tf32"] for r in lines][0] is False
    assert {r["perceptual"] for r in lines} == {load_config([]).features.perceptual} == {"ddpm"}
    gp.write_results(results, f"{gp.BEGIN}\nnew block\n{gp.END}")  # a second run replaces, never appends
    text = results.read_text()
    assert text.count(gp.BEGIN) == 1 and "new block" in text and "| fp32 |" not in text and "kept text" in text


def test_the_default_perceptual_network_is_the_one_timed():
    gp = _module()
    cfg, _, model, _, perceptual = gp.build(torch.device("cpu"), shrink=True)
    assert cfg.features.perceptual == "ddpm" and type(perceptual).__name__ == "_DDPMEncoder"
    assert perceptual._unet[0] is model  # the denoiser's own down path, as in a counterfactual run


def test_each_row_is_written_as_it_finishes(tmp_path, monkeypatch):
    gp = _module()
    cfg = load_config([ROOT / "configs/preset/paper.yaml"])
    monkeypatch.setattr(gp, "build", lambda device, shrink: (cfg, None, None, None, None))
    calls = []

    def measure(cfg, diffusion, model, guide, perceptual, device, precision, compile_, steps):
        calls.append(precision)
        if len(calls) == 2:
            raise RuntimeError("killed in the second variant")
        return {"precision": precision, "compile": compile_, "tf32": False, "perceptual": "ddpm", "seconds_per_step": 1.0,
                "seconds_per_frame": 60.0, "warmup_seconds": 2.0, "peak_memory_gb": None}

    monkeypatch.setattr(gp, "measure", measure)
    results, rows = tmp_path / "R.md", tmp_path / "rows.jsonl"
    with pytest.raises(RuntimeError, match="second variant"):
        gp.main(["--device", "cpu", "--no-compile", "--results", str(results), "--rows", str(rows)])
    assert [json.loads(line)["precision"] for line in rows.read_text().splitlines()] == ["fp32"]
    assert "(1 of 2 variants so far)" in results.read_text() and "| fp32 | no | off | 60.00 |" in results.read_text()


def test_a_gpu_torch_cannot_use_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    gp = _module()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gp, "gpu_present", lambda: "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)")
    monkeypatch.setattr(gp, "cuda_problem", lambda: "The NVIDIA driver on your system is too old")
    assert gp.main(["--results", str(tmp_path / "R.md")]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and "a GPU is present (GPU 0: NVIDIA H100" in out.err
    assert "cannot use it (The NVIDIA driver on your system is too old)" in out.err
    assert not (tmp_path / "R.md").exists()
    monkeypatch.setattr(gp, "gpu_present", lambda: None)  # no GPU at all: one line, exit 0
    assert gp.main(["--results", str(tmp_path / "R.md")]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out


def test_a_gpu_is_seen_by_nvidia_smi_or_its_device_file(tmp_path, monkeypatch):
    gp = _module()
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-2)'\n")
    smi.chmod(0o755)
    monkeypatch.setattr(gp.shutil, "which", lambda name: str(smi))
    assert gp.gpu_present() == "GPU 0: NVIDIA H200 (UUID: GPU-2)"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")  # a driver mismatch: the device file says it
    monkeypatch.setattr(gp.os.path, "exists", lambda path: path == "/dev/nvidia0")
    assert gp.gpu_present() == "/dev/nvidia0"
    monkeypatch.setattr(gp.shutil, "which", lambda name: None)
    monkeypatch.setattr(gp.os.path, "exists", lambda path: False)
    assert gp.gpu_present() is None


@pytest.mark.skipif(torch.cuda.is_available() or _module().gpu_present() is not None,
                    reason="a GPU is here: the script would measure, or refuse")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    res = subprocess.run(["bash", str(ROOT / "bench" / "gpu_paper.sh"), "--results", str(tmp_path / "R.md")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().count("\n") == 0 and "no CUDA GPU" in res.stdout
    assert not (tmp_path / "R.md").exists()
