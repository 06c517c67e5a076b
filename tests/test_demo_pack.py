"""The demo model pack (models/demo): it loads with the current code and config schema.

If a change breaks these tests, rebuild the pack with `make demo-models` (docs/architecture.md).
"""

from __future__ import annotations

import json

import pytest
import torch

from diffice.cli import main
from diffice.config import config_from_args, from_dict
from diffice.errors import UserError
from diffice.experiments.pack import PACK_MAX_MB, pack_words
from diffice.modules.common import load_checkpoint
from diffice.modules.ddpm import load_ddpm
from diffice.modules.pack import PACK_FILES, write_pack_file
from tests.conftest import ROOT

PACK = ROOT / "models" / "demo"
DEMO = str(ROOT / "configs/preset/demo.yaml")


def test_pack_is_small_and_documented():
    files = {f.name for f in PACK.iterdir()}
    assert set(PACK_FILES) | {"PROVENANCE.json"} <= files
    total = sum((PACK / n).stat().st_size for n in PACK_FILES)
    assert total <= PACK_MAX_MB * 1e6
    prov = json.loads((PACK / "PROVENANCE.json").read_text())
    assert prov["total_bytes"] == total
    assert len(prov["commit"]) == 40 and prov["machine"]["cpu_count"] >= 1
    for kind in ("ddpm", "classifier", "oracle"):
        m = prov["models"][kind]
        assert m["trained_steps"] > 0 and (m["train_seconds"] or m["last_segment_seconds"])
    assert prov["models"]["classifier"]["test"]["balanced_accuracy"] > 0.5
    assert set(prov["ddpm_check"]["dice"]) == {"head", "bone", "th", "csp"}
    syn = prov["models"]["synthesis"]
    assert syn["trained_steps"] > 0 and set(syn["test"]["dice"]) >= {"head", "bone", "th", "csp"}


@pytest.mark.usefixtures("one_thread")
def test_pack_loads_with_the_current_code_and_schema():
    for name, (kind, _) in PACK_FILES.items():
        raw = torch.load(PACK / name, map_location="cpu", weights_only=True)  # tensors and plain types only
        assert all(v.dtype != torch.float32 for v in raw["state_dict"].values())  # fp16 (and integer buffers)
        from_dict(raw["diffice"]["config"])  # the stored config fits today's schema
        load_checkpoint(PACK / name, kind)   # and the weights fit today's networks
    cfg = config_from_args([DEMO, *pack_words(PACK)])
    from diffice.modules.counterfactual import load_components

    comps = load_components(cfg)  # image sizes and the noise level checked as a run checks them
    h, w = cfg.data.image_size
    x = torch.zeros(2, 1, h, w)
    with torch.no_grad():
        assert comps.model(x, torch.tensor([10, 20])).shape == (2, 2, h, w)
        assert comps.guide(x).shape == (2,)
        assert comps.oracle(x)["qs_o"].shape == (2,)
    from diffice.synthesis.run import Synthesizer

    syn = Synthesizer(cfg, cfg.synthesis.ckpt)  # with the judging segmenter the demo uses (one stage: no steering one)
    assert syn.size == (h, w) and syn.steer is None and syn.judge is not None
    two = Synthesizer(config_from_args([DEMO, *pack_words(PACK), "synthesis.two_stage=true"]), cfg.synthesis.ckpt)
    assert two.steer is not None
    # synthesis.autocast=bf16: the UNet runs under autocast, its outputs float32 and close to fp32's
    syn, fast = (Synthesizer(config_from_args([DEMO, *pack_words(PACK), f"synthesis.autocast={p}"]), cfg.synthesis.ckpt,
                             need_steer=False, need_judge=False) for p in ("none", "bf16"))
    cond = {"layout": torch.zeros(2, len(syn.classes), h, w), "plane": torch.zeros(2, dtype=torch.long), "ga": torch.full((2,), 25.0)}
    xt, t = torch.randn(2, 1, h, w, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 500])
    with torch.no_grad():
        a, b = (s.net(xt, t, cond["layout"], cond["plane"], cond["ga"]) for s in (syn, fast))
    assert b.dtype == torch.float32 and not torch.equal(a, b) and (a - b).abs().mean() < 0.05 * a.abs().mean()
    with pytest.raises(UserError, match="synthesis.autocast: 'fp8'"):
        Synthesizer(config_from_args([DEMO, *pack_words(PACK), "synthesis.autocast=fp8"]), cfg.synthesis.ckpt,
                    need_steer=False, need_judge=False)


def test_pack_words_name_a_missing_pack(tmp_path):
    with pytest.raises(UserError, match="PROVENANCE.json: not found"):
        pack_words(tmp_path)
    assert main(["demo", "--pack", str(tmp_path)]) == 2


@pytest.mark.usefixtures("one_thread")
def test_pack_file_round_trip(tiny_overrides, tmp_path):
    tiny = str(ROOT / "configs/preset/tiny.yaml")
    assert main(["train-ddpm", tiny, *tiny_overrides, "ddpm.max_steps=2", "ddpm.sample_every_n_steps=0"]) == 0
    src = tmp_path / "runs" / "ddpm" / "last.ckpt"
    facts = write_pack_file(src, tmp_path / "ddpm.ckpt", "ddpm")
    assert facts["trained_steps"] == 2 and facts["bytes"] < src.stat().st_size / 2
    full, packed = load_ddpm(src), load_ddpm(tmp_path / "ddpm.ckpt")
    assert packed.trained_steps == 2
    for (k, a), b in zip(full.ema_model.state_dict().items(), packed.ema_model.state_dict().values(), strict=True):
        assert torch.equal(a.half().float(), b.float()), k
    for a, b in zip(packed.model.parameters(), packed.ema_model.parameters(), strict=True):
        assert torch.equal(a, b)  # the pack's trained weights are its EMA weights


def test_a_tensor_beyond_float16_stays_float32_in_a_pack():
    import torch

    from diffice.modules.pack import pack_state

    state = {"a.weight": torch.ones(3), "bn.running_var": torch.tensor([1.0, 2.0e6])}
    out = pack_state("classifier", state)
    assert out["a.weight"].dtype == torch.float16 and out["bn.running_var"].dtype == torch.float32
    assert float(out["bn.running_var"][1]) == 2.0e6


@pytest.mark.slow  # two runs of about a minute each on 2 cores
def test_a_counterfactual_run_on_two_ddp_processes_writes_what_one_process_writes(tmp_path):
    """strategy=ddp (Lightning's subprocess launcher, gloo on the CPU), through the command: the same
    results.csv and metrics.json as one process but for the timings, and a report; rank zero alone reports
    (no metric waits for the finished ranks)."""
    import csv
    import os
    import subprocess
    import sys

    words = [DEMO, *pack_words(PACK), "cf.limit=4", "cf.iterations=1", "cf.batch_size=2", "wandb.mode=disabled",
             "trainer.progress_bar=false", "trainer.accelerator=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    timing = ("seconds", "batch_seconds_mean", "batch_seconds_std", "peak_memory_gb", "total_hours")
    found = {}
    for name, extra in (("one", []), ("ddp", ["trainer.devices=2", "trainer.strategy=ddp"])):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "diffice.cli", "counterfactuals", *words, f"cf.out={out}", *extra],
                              env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (out / "report.html").is_file()
        rows = [{k: v for k, v in r.items() if k not in timing} for r in csv.DictReader(open(out / "results.csv"))]
        metrics = {k: v for k, v in json.loads((out / "metrics.json").read_text()).items() if k not in timing}
        found[name] = (rows, metrics)
    assert len(found["one"][0]) == 4 and found["ddp"] == found["one"]


def test_a_pack_keeps_the_models_of_an_earlier_pack_that_runs_does_not_hold(tiny_overrides, tmp_path, one_thread):
    """demo-models --keep PACK: a campaign across sessions (whose run folders do not survive) replaces one
    model at a time; the others are PACK's files byte for byte, with their provenance."""
    tiny = str(ROOT / "configs/preset/tiny.yaml")
    steps = ["ddpm.max_steps=1", "segmenter.max_steps=1", "guide.max_steps=1", "oracle.max_steps=1", "ddpm.sample_every_n_steps=0",
             "segmenter.encoder=tu-mobilenetv3_small_050", "oracle.encoder=tu-mobilenetv3_small_050"]
    first, second, r2 = tmp_path / "first", tmp_path / "second", tmp_path / "r2"
    base = [t for t in tiny_overrides if not t.startswith("paths.runs=")]
    assert main(["demo-models", "--preset", tiny, "--runs", str(tmp_path / "r1"), "--out", str(first), "--no-synthesis",
                 "--max-mb", "100", *base, *steps]) == 0
    # the next session: only a longer DDPM in its run folder
    assert main(["train-ddpm", tiny, *base, *steps, "ddpm.max_steps=2", f"paths.runs={r2}"]) == 0
    assert main(["demo-models", "--preset", tiny, "--runs", str(r2), "--out", str(second), "--no-synthesis", "--keep", str(first),
                 "--max-mb", "100", *base, *steps, "ddpm.max_steps=2"]) == 0
    assert not (r2 / "segmenter").exists() and not (r2 / "classifier").exists() and not (r2 / "oracle").exists()
    for name in ("guide.ckpt", "oracle.ckpt"):
        assert (second / name).read_bytes() == (first / name).read_bytes()
    assert (second / "ddpm.ckpt").read_bytes() != (first / "ddpm.ckpt").read_bytes()
    p1, p2 = (json.loads((p / "PROVENANCE.json").read_text())["models"] for p in (first, second))
    assert p2["ddpm"]["trained_steps"] == 2 and "kept_from" not in p2["ddpm"]
    assert {k: v for k, v in p2["oracle"].items() if k != "kept_from"} == p1["oracle"] and str(first) in p2["oracle"]["kept_from"]
    assert main(["demo-models", "--preset", tiny, "--runs", str(tmp_path / "r3"), "--out", str(tmp_path / "third"),
                 "--no-synthesis", "--keep", str(tmp_path / "nothing"), *base, *steps]) == 2
