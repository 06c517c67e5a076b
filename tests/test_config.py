"""Config merging, errors, and the defaults.yaml mirror of the schema."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from diffice.cli import main
from diffice.config import Config, load_config, split_args
from diffice.errors import UserError
from tests.conftest import ROOT


def _keys(d, prefix=""):
    out = set()
    for k, v in d.items():
        full = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _keys(v, full + ".")
        else:
            out.add(full)
    return out


def test_defaults_yaml_mirrors_schema_exactly():
    schema = OmegaConf.to_container(OmegaConf.structured(Config), resolve=False)
    with open(ROOT / "configs/defaults.yaml") as fh:
        defaults = yaml.safe_load(fh)
    assert _keys(defaults) == _keys(schema)
    # and the values agree too: the schema's defaults are what defaults.yaml documents
    assert OmegaConf.create(defaults) == OmegaConf.create(schema)


def test_merge_order_later_wins(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("data:\n  batch_size: 3\n  augment: false\n")
    b.write_text("data:\n  batch_size: 5\n")
    cfg = load_config([a, b], ["data.image_size=[32,40]"])
    assert cfg.data.batch_size == 5
    assert cfg.data.augment is False
    assert list(cfg.data.image_size) == [32, 40]
    cfg = load_config([a, b], ["data.batch_size=7"])
    assert cfg.data.batch_size == 7


def test_interpolation_resolved():
    cfg = load_config([], ["paths.runs=/x/y"])
    assert cfg.cf.ddpm_ckpt == "/x/y/ddpm/last.ckpt"


def test_every_shipped_config_loads():
    files = sorted((ROOT / "configs").rglob("*.yaml"))
    assert len(files) >= 6
    for f in files:
        load_config([f])


@pytest.mark.parametrize(
    "text, match",
    [
        ("data:\n  batch_sise: 3\n", r"unknown key 'data.batch_sise'"),
        ("data:\n  batch_size: many\n", r"data.batch_size"),
        ("data: [1, 2\n", r"invalid YAML"),
        ("- 1\n- 2\n", r"mapping"),
    ],
)
def test_bad_config_file_names_file_and_key(tmp_path, text, match):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=match) as info:
        load_config([f])
    assert str(f) in str(info.value)


def test_bad_overrides():
    with pytest.raises(UserError, match="unknown key 'nope'"):
        load_config([], ["nope=1"])
    with pytest.raises(UserError, match="data.batch_size"):
        load_config([], ["data.batch_size=abc"])
    with pytest.raises(UserError, match="not found"):
        load_config(["missing.yaml"])


def test_a_key_with_no_value_is_named_in_one_line(monkeypatch):
    import diffice.config as C

    monkeypatch.setattr(C, "_base", lambda *a: OmegaConf.create({"data": {"root": "???", "size": 3}, "seed": "???"}))
    with pytest.raises(UserError, match=r"^config: required key 'data.root' has no value; set it with data.root=\.\.\.$"):
        C.load_config([], use_defaults_file=False)
    monkeypatch.undo()
    with pytest.raises(UserError, match=r"^config: .*nowhere"):  # an interpolation of no key: one line too
        load_config([], ["paths.runs=${nowhere}"])


def test_a_config_file_rewritten_at_once_with_the_same_size_is_read_again(tmp_path):
    """Files are parsed once per content, not per modification time (two writes within one clock tick)."""
    f = tmp_path / "c.yaml"
    f.write_text("seed: 1\n")
    assert load_config([f]).seed == 1
    f.write_text("seed: 2\n")
    assert load_config([f]).seed == 2 and load_config([f], ["seed=3"]).seed == 3
    f.write_text("seed: [\n")
    with pytest.raises(UserError, match="c.yaml: invalid YAML"):
        load_config([f])


def test_split_args():
    assert split_args(["a.yaml", "x=1", "b.yml"]) == (["a.yaml", "b.yml"], ["x=1"])
    with pytest.raises(UserError, match="argument 'oops'"):
        split_args(["oops"])


def test_cli_config_prints_resolved(capsys):
    assert main(["config", "data.batch_size=3"]) == 0
    out = capsys.readouterr().out
    assert "batch_size: 3" in out and "${" not in out


def test_cli_user_error_is_one_line_exit_2(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("trainer:\n  precison: bf16\n")
    proc = subprocess.run(
        [sys.executable, "-m", "diffice.cli", "config", str(f)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "trainer.precison" in lines[0] and str(f) in lines[0]


def test_cli_help_and_unknown_command(capsys):
    assert main(["--help"]) == 0
    assert "counterfactuals" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2


# ----------------------------------------------------------------------------- trainer.* passthrough


def test_any_lightning_trainer_argument_under_trainer_is_accepted(tmp_path):
    from diffice.config import from_dict, to_dict, trainer_extras

    f = tmp_path / "t.yaml"
    f.write_text("trainer:\n  max_time: {minutes: 1}\n  limit_val_batches: 0.5\n")
    cfg = load_config([f], ["trainer.accumulate_grad_batches=2", "trainer.deterministic=true"])
    want = {"max_time": {"minutes": 1}, "limit_val_batches": 0.5, "accumulate_grad_batches": 2, "deterministic": True}
    assert trainer_extras(cfg) == want
    assert trainer_extras(from_dict(to_dict(cfg))) == want  # as a checkpoint stores and rebuilds it
    assert trainer_extras(load_config([], ["trainer.max_time=00:00:00:30"])) == {"max_time": "00:00:00:30"}
    assert trainer_extras(load_config([])) == {}
    # diffice's own trainer keys keep their types; other sections stay closed
    with pytest.raises(UserError, match=r"trainer.num_nodes"):
        load_config([], ["trainer.num_nodes=many"])
    with pytest.raises(UserError, match=r"unknown key 'data.accumulate_grad_batches'"):
        load_config([], ["data.accumulate_grad_batches=2"])


@pytest.mark.parametrize("word, says", [
    ("trainer.acumulate_grad_batches=2", "unknown key 'trainer.acumulate_grad_batches' (neither a diffice trainer key "
                                         "nor an argument of lightning.Trainer"),
    ("trainer.max_steps=5", "key 'trainer.max_steps' is set by diffice; set the model's own max_steps"),
    ("trainer.logger=true", "key 'trainer.logger' is set by diffice; set wandb.mode"),
])
def test_a_trainer_key_that_is_not_a_trainer_argument_is_one_line(word, says, capsys):
    assert main(["config", word]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"override '{word.split('=')[0]}': " in err[0] and says in err[0], err
    if "acumulate" in word:
        assert "did you mean trainer.accumulate_grad_batches?" in err[0]


def test_a_misspelled_trainer_key_in_a_file_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("trainer:\n  max_tme: 10\n")
    with pytest.raises(UserError, match=rf"^{f}: unknown key 'trainer.max_tme' .*did you mean trainer.max_time\?$"):
        load_config([f])
