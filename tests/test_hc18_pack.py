"""The real-data model pack (models/hc18, `diffice demo-models --preset hc18 --no-synthesis`): small,
documented, loads with weights_only=True and the current code; counterfactuals only (no synthesis)."""

from __future__ import annotations

import json

import pytest
import torch

from diffice.cli import main
from diffice.config import config_from_args, from_dict
from diffice.experiments.pack import pack_has_synthesis, pack_words
from diffice.modules.common import load_checkpoint
from diffice.modules.pack import PACK_FILES
from tests.conftest import ROOT

PACK = ROOT / "models" / "hc18"
HC18_PRESET = str(ROOT / "configs/preset/hc18.yaml")
MAX_MB = 30.0
FILES = {name: kind for name, (kind, _) in PACK_FILES.items() if kind != "synthesis"}

pytestmark = pytest.mark.skipif(not (PACK / "PROVENANCE.json").is_file(), reason="models/hc18 not built")


def test_hc18_pack_is_small_and_documented():
    total = sum((PACK / n).stat().st_size for n in FILES)
    assert total <= MAX_MB * 1e6 and not pack_has_synthesis(PACK)
    prov = json.loads((PACK / "PROVENANCE.json").read_text())
    assert prov["total_bytes"] == total and prov["preset"] == "hc18.yaml" and len(prov["commit"]) == 40
    assert prov["config"]["data"]["image_size"] == [128, 160] and "--no-synthesis" in prov["command"]
    for kind in ("ddpm", "classifier", "oracle"):
        assert prov["models"][kind]["trained_steps"] > 0
    assert prov["models"]["classifier"]["segmenter_test"]["dice_head"] > 0.9
    assert set(prov["ddpm_check"]["dice"]) == {"head"} and "sononet" in prov["ddpm_check"]


@pytest.mark.usefixtures("one_thread")
def test_hc18_pack_loads_with_the_current_code():
    for name, kind in FILES.items():
        raw = torch.load(PACK / name, map_location="cpu", weights_only=True)
        # fp16, except a tensor beyond fp16's range (the SonoNet release's first batch-norm variance)
        assert all(v.dtype != torch.float32 or v.abs().max() > 65504 for v in raw["state_dict"].values())
        from_dict(raw["diffice"]["config"])
        load_checkpoint(PACK / name, kind)
    words = pack_words(PACK)
    assert not any(w.startswith("synthesis.ckpt=") for w in words)
    cfg = config_from_args([HC18_PRESET, *words, "features.sononet_weights=null"])
    from diffice.modules.counterfactual import load_components

    comps = load_components(cfg)
    x = torch.zeros(2, 1, 128, 160)
    with torch.no_grad():
        assert comps.model(x, torch.tensor([10, 20])).shape == (2, 2, 128, 160)
        assert comps.guide(x).shape == (2,) and comps.guide.segment(x).shape == (2, 2, 128, 160)


def test_demo_hc18_without_its_data_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/hc18-faults here
    code = main(["demo", "--pack", str(PACK), "--preset", HC18_PRESET, f"paths.runs={tmp_path / 'runs'}",
                 "wandb.mode=disabled"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "manifest.csv" in err[0]
    assert not (tmp_path / "runs").exists()
