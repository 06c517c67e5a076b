"""bench/gpu_paper.py: its logic on the CPU at a shrunk size, the no-GPU line, the RESULTS.md block."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest
import torch

from tests.conftest import ROOT


def _module():
    spec = importlib.util.spec_from_file_location("gpu_paper", ROOT / "bench" / "gpu_paper.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.usefixtures("one_thread")
def test_the_measurement_runs_at_a_shrunk_size_and_replaces_its_block(tmp_path):
    gp = _module()
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nkept text\n")
    assert gp.main(["--device", "cpu", "--shrink", "--steps", "1", "--no-compile", "--results", str(results)]) == 0
    text = results.read_text()
    assert "kept text" in text and text.count(gp.BEGIN) == 1 and "| fp32 | no |" in text and "| bf16 | no |" in text
    assert "32x40" in text
    gp.write_results(results, f"{gp.BEGIN}\nnew block\n{gp.END}")  # a second run replaces, never appends
    text = results.read_text()
    assert text.count(gp.BEGIN) == 1 and "new block" in text and "| fp32 |" not in text and "kept text" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script would measure")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    res = subprocess.run(["bash", str(ROOT / "bench" / "gpu_paper.sh"), "--results", str(tmp_path / "R.md")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().count("\n") == 0 and "no CUDA GPU" in res.stdout
    assert not (tmp_path / "R.md").exists()
