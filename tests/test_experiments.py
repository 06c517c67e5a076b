"""The shipped experiment files: they parse, every row is a valid config, and tau maps into range."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffice.config import load_config
from diffice.diffusion import build_diffusion
from diffice.errors import UserError
from diffice.experiments.spec import preset_file, read_experiment, respaced_steps, row_layer, tau_scale
from diffice.synthesis.layouts import OPERATORS, parse_anomaly

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))


def test_the_three_experiments_are_there():
    assert {p.stem for p in EXPERIMENTS} >= {"table1", "table2", "ablation"}


@pytest.mark.parametrize("preset", ["tiny", "paper"])
@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_row_is_a_valid_config_within_the_ddpms_noise_range(path, preset):
    base, runs, options = read_experiment(path)
    files = [preset_file(preset)]
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
    scale = tau_scale(options.get("tau_scale"), preset, path)
    for label, layer in runs.items():
        cfg = load_config([files[0], base, row_layer(layer, base, scale, files, []), *files[1:]])
        steps = respaced_steps(cfg)
        assert 1 <= cfg.cf.tau <= steps, label
        # the DDPM of this preset was trained on t < train_max_t * T: the row must start inside it
        d = build_diffusion(cfg, respacing=str(cfg.cf.respacing))
        t = int(d.timestep_map[cfg.cf.tau - 1])
        assert t < float(cfg.ddpm.train_max_t) * d.original_num_steps, (label, t)


def test_paper_preset_keeps_the_papers_tau():
    base, runs, options = read_experiment(ROOT / "experiments/ablation.yaml")
    files = [preset_file("paper")]
    scale = tau_scale(options.get("tau_scale"), "paper", "ablation.yaml")
    taus = {label: row_layer(layer, base, scale, files, [])["cf"]["tau"] for label, layer in runs.items()}
    assert {taus["tau=80"], taus["tau=120"], taus["tau=160"], taus["tau=200"]} == {80, 120, 160, 200}


def test_tau_scale_forms():
    assert tau_scale(400, "tiny", "x.yaml") == 400
    assert tau_scale({"tiny": 1000, "default": 400}, "tiny", "x.yaml") == 1000
    assert tau_scale({"tiny": 1000, "default": 400}, "configs/preset/paper.yaml", "x.yaml") == 400
    assert tau_scale({"tiny": 1000}, "paper", "x.yaml") is None
    assert tau_scale(None, "tiny", "x.yaml") is None
    with pytest.raises(UserError, match="x.yaml: tau_scale"):
        tau_scale("many", "tiny", "x.yaml")


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

    from diffice.experiments.demo import judges_summary

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
    cfg = load_config([preset_file("demo"), base])
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


# ----------------------------------------------------------------------------- the runner


@pytest.mark.parametrize("preset", ["tiny", "demo", "paper"])
@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_plans_without_training_or_writing(path, preset, tmp_path):
    """The runner resolves every row of every shipped experiment (a dry resolution: nothing trained or written)."""
    from diffice.experiments import plan

    exp = plan(path, preset=preset, args=[f"paths.runs={tmp_path}", "wandb.mode=disabled"])
    assert [r.label for r in exp.rows] == list(read_experiment(path)[1])
    assert len({r.out for r in exp.rows}) == len(exp.rows)
    for row in exp.rows:
        assert row.out.parent == tmp_path / "experiments" / exp.name
        if exp.kind.out_key:
            assert str(row.cfg.cf.out if exp.kind.out_key == "cf.out" else row.cfg.synthesis.out) == str(row.out)
    assert (exp.train_cfg is not None) == exp.kind.trains_models
    assert not any(tmp_path.iterdir())


def test_presets_hold_no_downstream_settings():
    """One place for the downstream study's CPU settings: the experiment file's per-preset block."""
    import yaml

    for preset in (ROOT / "configs" / "preset").glob("*.yaml"):
        assert "downstream" not in (yaml.safe_load(preset.read_text()) or {}), preset.name
    _, _, options = read_experiment(ROOT / "experiments" / "fetalflex_downstream.yaml")
    cpu = options["presets"]["demo"]["downstream"]
    assert options["presets"]["tiny"] == options["presets"]["demo"] and cpu["steps"] == 300 and cpu["batch_size"] == 32
    # the CPU recipes (issue 25) are for the study's own six models, and flips are on for all of them
    assert cpu["flips"] and set(cpu["recipes"]) <= set(load_config([]).downstream.models)


def test_rows_are_resolved_once_at_the_start(tmp_path, monkeypatch):
    """Editing a config file while an experiment runs changes none of its rows; rows run in order
    through their kind, and table.md names the command."""
    from diffice.experiments import plan, run_experiment, runner

    preset = tmp_path / "mine.yaml"
    preset.write_text("cf: {tau: 7}\n")
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text("description: two rows\nruns:\n  A: {cf: {method: dime}}\n  B: {}\n")
    seen = []

    def run(exp, row):
        preset.write_text("cf: {tau: 3}\n")  # edited while the experiment runs
        seen.append((row.label, row.cfg.cf.method, row.cfg.cf.tau, str(row.cfg.cf.out)))
        return row.label

    kind = runner.Kind("counterfactuals", run, lambda exp, results: "|".join(r for _, r in results), out_key="cf.out",
                       trains_models=False)
    monkeypatch.setattr(runner, "_kinds", lambda: {"counterfactuals": kind})
    exp = plan(exp_file, preset=str(preset), args=[f"paths.runs={tmp_path}", "wandb.mode=disabled"], rows=["B", "A"])
    table = run_experiment(exp)
    root = tmp_path / "experiments" / "exp"
    assert seen == [("A", "dime", 7, str(root / "a")), ("B", "diff-ice", 7, str(root / "b"))]
    text = table.read_text()
    assert table == root / "table.md" and text.startswith("# exp\n\ntwo rows") and text.endswith("A|B")
    assert f"--row 'B' --row 'A' paths.runs={tmp_path} wandb.mode=disabled" in text


def test_a_row_naming_its_own_model_keeps_it_under_pack(tmp_path):
    """--pack gives the rows the pack's checkpoints, under the experiment file's keys: a row that
    names its own model (synthesis_quality.yaml's offset-noise rows) keeps it (issue 25)."""
    from diffice.experiments.runner import plan

    root = Path(__file__).resolve().parents[1]
    exp = plan(str(root / "experiments" / "synthesis_quality.yaml"), preset="demo", args=[f"paths.runs={tmp_path}"],
               rows=["One stage (w 3)", "Offset-noise model one stage (w 3) (64 x 2)"], pack=str(root / "models" / "demo"))
    own, offset = exp.rows
    assert own.cfg.synthesis.ckpt.endswith("models/demo/synthesis.ckpt")
    assert offset.cfg.synthesis.ckpt == f"{tmp_path}/synthesis-offset/last.ckpt"
    assert offset.cfg.synthesis.judge_ckpt.endswith("models/demo/guide.ckpt") and exp.train_cfg is None
