"""The shipped experiment files: they parse, every row is a valid config, and tau maps into range."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffice.commands.demo import _preset_file, _respaced_steps, _tau_scale, read_experiment, row_layer
from diffice.config import load_config
from diffice.diffusion import build_diffusion
from diffice.errors import UserError
from diffice.synthesis.layouts import OPERATORS, parse_anomaly

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))


def test_the_three_experiments_are_there():
    assert {p.stem for p in EXPERIMENTS} >= {"table1", "table2", "ablation"}


@pytest.mark.parametrize("preset", ["tiny", "paper"])
@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_row_is_a_valid_config_within_the_ddpms_noise_range(path, preset):
    base, runs, options = read_experiment(path)
    files = [_preset_file(preset)]
    if options.get("kind") == "downstream":  # every row with this preset's block is a valid config
        block = (options.get("presets") or {}).get(preset) or {}
        for label, layer in runs.items():
            cfg = load_config([files[0], base, block, layer])
            d = cfg.downstream
            assert len(d.models) == 6 and len(d.seeds) >= 2 and d.steps >= 1 and d.synth_edit_frames >= 1, label
        return
    if options.get("kind") == "synthesis":  # no noise level to check: every row must be a valid config
        for label, layer in runs.items():
            cfg = load_config([files[0], base, row_layer(layer, base, None, files, []), *files[1:]])
            assert cfg.synthesis.count >= 1 and str(cfg.synthesis.ckpt).endswith("last.ckpt"), label
            for spec in cfg.synthesis.edits:  # every edit names a known operator / anomaly at a severity in range
                assert parse_anomaly(spec) or spec.split(":")[0] in OPERATORS, (label, spec)
        return
    scale = _tau_scale(options.get("tau_scale"), preset, path)
    for label, layer in runs.items():
        cfg = load_config([files[0], base, row_layer(layer, base, scale, files, []), *files[1:]])
        steps = _respaced_steps(cfg)
        assert 1 <= cfg.cf.tau <= steps, label
        # the DDPM of this preset was trained on t < train_max_t * T: the row must start inside it
        d = build_diffusion(cfg, respacing=str(cfg.cf.respacing))
        t = int(d.timestep_map[cfg.cf.tau - 1])
        assert t < float(cfg.ddpm.train_max_t) * d.original_num_steps, (label, t)


def test_paper_preset_keeps_the_papers_tau():
    base, runs, options = read_experiment(ROOT / "experiments/ablation.yaml")
    files = [_preset_file("paper")]
    scale = _tau_scale(options.get("tau_scale"), "paper", "ablation.yaml")
    taus = {label: row_layer(layer, base, scale, files, [])["cf"]["tau"] for label, layer in runs.items()}
    assert {taus["tau=80"], taus["tau=120"], taus["tau=160"], taus["tau=200"]} == {80, 120, 160, 200}


def test_tau_scale_forms():
    assert _tau_scale(400, "tiny", "x.yaml") == 400
    assert _tau_scale({"tiny": 1000, "default": 400}, "tiny", "x.yaml") == 1000
    assert _tau_scale({"tiny": 1000, "default": 400}, "configs/preset/paper.yaml", "x.yaml") == 400
    assert _tau_scale({"tiny": 1000}, "paper", "x.yaml") is None
    assert _tau_scale(None, "tiny", "x.yaml") is None
    with pytest.raises(UserError, match="x.yaml: tau_scale"):
        _tau_scale("many", "tiny", "x.yaml")


@pytest.mark.parametrize(
    "text, message",
    [
        ("cf: {tau: 3}\n", "key 'runs'"),
        ("runs: [a, b]\n", "key 'runs'"),
        ("runs: {a: 3}\n", "runs.a must be a mapping"),
        ("runs: {a: {cf: {tau: [\n", "invalid YAML"),
    ],
)
def test_bad_experiment_files_name_the_file(tmp_path, text, message):
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    with pytest.raises(UserError, match=message) as err:
        read_experiment(p)
    assert str(p) in str(err.value)
    with pytest.raises(UserError, match="not found"):
        read_experiment(tmp_path / "missing.yaml")


def test_demo_summarises_the_judges_and_warns_on_a_weak_guide(tmp_path):
    import json

    from diffice.commands.demo import judges_summary

    assert judges_summary(tmp_path) == []  # nothing trained: nothing to say
    for stage, test in [("segmenter", {"dice_mean": 0.81}), ("classifier", {"balanced_accuracy": 0.96, "auroc": 1.0}),
                        ("oracle", {"mae_qs_o": 0.2})]:
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "metrics.json").write_text(json.dumps({"test": test}))
    lines = judges_summary(tmp_path)
    assert lines == ["judges on the test split: segmenter Dice 0.81, guide balanced accuracy 0.96 (AUROC 1.00), "
                     "oracle QS_O MAE 0.20"]
    (tmp_path / "classifier" / "metrics.json").write_text(json.dumps({"test": {"balanced_accuracy": 0.7}}))
    assert judges_summary(tmp_path)[-1].startswith("warning: the guide's test balanced accuracy is 0.70")


@pytest.mark.parametrize("path", [p for p in EXPERIMENTS if p.stem in ("table1", "table2", "ablation")], ids=lambda p: p.stem)
def test_counterfactual_tables_default_to_64_frames(path):
    """Issue 24: tables on enough frames for their intervals (>= 64), unless overridden."""
    base, _, _ = read_experiment(path)
    cfg = load_config([_preset_file("demo"), base])
    assert cfg.cf.limit is None or cfg.cf.limit >= 64


def test_paired_rows_must_name_two_rows(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs:\n  A: {cf: {method: dime}}\n  B: {cf: {method: diff-ice}}\npaired:\n  - [A, C]\n")
    with pytest.raises(UserError, match="paired"):
        read_experiment(bad)
    good = tmp_path / "good.yaml"
    good.write_text("runs:\n  A: {cf: {method: dime}}\n  B: {cf: {method: diff-ice}}\npaired:\n  - [A, B]\n")
    assert read_experiment(good)[2]["paired"] == [["A", "B"]]


def test_unknown_row_is_one_line(capsys):
    from diffice.cli import main

    assert main(["experiment", str(ROOT / "experiments/table1.yaml"), "--row", "Nope", "wandb.mode=disabled"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no row 'Nope'" in err[0]
