"""``diffice demo`` (the whole pipeline on phantom data) and ``diffice experiment`` (the paper's tables).

Both run the same stages in order, each resumable: a stage whose checkpoint is complete is
loaded rather than retrained, and counterfactual frames already written are skipped.

    phantom data -> train-ddpm -> train-segmenter -> train-classifier -> train-oracle
                 -> counterfactuals -> metrics.json, report.html
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from diffice.errors import UserError

# stage name -> (command function path, the config section whose max_steps it trains for)
TRAIN_STAGES: list[tuple[str, str, str]] = [
    ("ddpm", "diffice.commands.ddpm:cmd_train_ddpm", "ddpm"),
    ("segmenter", "diffice.commands.judges:cmd_train_segmenter", "segmenter"),
    ("classifier", "diffice.commands.judges:cmd_train_classifier", "guide"),
    ("oracle", "diffice.commands.judges:cmd_train_oracle", "oracle"),
]


def _call(target: str) -> Callable[[list[str]], int]:
    import importlib

    mod, fn = target.split(":")
    return getattr(importlib.import_module(mod), fn)


def _trained_steps(ckpt: Path) -> int | None:
    """The global step stored in a diffice checkpoint, or None if there is none.

    Read with the safe loader (no code in the file runs); an unreadable or refused checkpoint
    gives None, and the stage's own training then reports it in one line.
    """
    if not ckpt.is_file():
        return None
    from diffice.nets.weights import torch_load

    try:
        return int(torch_load(ckpt, f"{ckpt}: checkpoint not found", "checkpoint").get("global_step", -1))
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is retrained (fit reports it)
        return None


def train_models(words: Sequence[str], *, log: Callable[[str], None] = print) -> dict[str, float]:
    """Train (or resume, or skip when finished) the four models; returns seconds per stage."""
    from diffice.config import config_from_args
    from diffice.modules.common import LAST, run_dir

    cfg = config_from_args(words)
    times: dict[str, float] = {}
    for stage, target, section in TRAIN_STAGES:
        want = int(cfg[section].max_steps)
        have = _trained_steps(run_dir(cfg, stage) / LAST)
        if have is not None and have >= want:
            log(f"[{stage}] already trained ({have} steps): {run_dir(cfg, stage) / LAST}")
            times[stage] = 0.0
            continue
        log(f"[{stage}] training for {want} steps" + (f" (resuming at step {have})" if have else ""))
        t0 = time.perf_counter()
        code = _call(target)(list(words))
        if code:
            raise UserError(f"stage '{stage}' failed with exit status {code}")
        times[stage] = time.perf_counter() - t0
    return times


def _preset_file(preset: str) -> str:
    from diffice.config import configs_dir

    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        return str(path)
    path = configs_dir() / "preset" / f"{preset}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (configs_dir() / "preset").glob("*.yaml"))
        raise UserError(f"--preset {preset}: no such preset (have: {', '.join(names)})")
    return str(path)


# ----------------------------------------------------------------------------- demo


WEAK_GUIDE = 0.8  # test balanced accuracy under which a flip ratio says little


def judges_summary(runs: Path) -> list[str]:
    """One line on the judges' test quality (from their metrics.json), and a warning when the
    guide is too weak for its flips to mean much."""

    def test_metrics(stage: str) -> dict:
        try:
            return json.loads((runs / stage / "metrics.json").read_text()).get("test") or {}
        except (OSError, ValueError):
            return {}

    seg, guide, oracle = test_metrics("segmenter"), test_metrics("classifier"), test_metrics("oracle")
    parts = []
    if "dice_mean" in seg:
        parts.append(f"segmenter Dice {seg['dice_mean']:.2f}")
    if "balanced_accuracy" in guide:
        parts.append(f"guide balanced accuracy {guide['balanced_accuracy']:.2f} (AUROC {guide.get('auroc', float('nan')):.2f})")
    if "mae_qs_o" in oracle:
        parts.append(f"oracle QS_O MAE {oracle['mae_qs_o']:.2f}")
    lines = ["judges on the test split: " + ", ".join(parts)] if parts else []
    acc = guide.get("balanced_accuracy")
    if acc is not None and acc < WEAK_GUIDE:
        lines.append(f"warning: the guide's test balanced accuracy is {acc:.2f} (< {WEAK_GUIDE}); it calls many NSP "
                     f"frames SP, so the flip ratio means little: train it longer (guide.max_steps)")
    return lines


def cmd_demo(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="diffice demo",
        description="The whole pipeline on the built-in phantom with the tiny preset: train the DDPM, "
        "segmenter, guide and oracle, make Diff-ICE counterfactuals of the NSP test frames, and "
        "write metrics and a report. Interrupt it at any time; a rerun resumes.",
    )
    p.add_argument("args", nargs="*", help="extra config files (*.yaml) and key=value overrides")
    p.add_argument("--preset", default="tiny", help="preset name or file (default: tiny)")
    ns = p.parse_intermixed_args(list(argv))

    words = [_preset_file(ns.preset), *ns.args]
    t0 = time.perf_counter()
    times = train_models(words)
    print("[counterfactuals] Diff-ICE on the NSP test frames")
    t1 = time.perf_counter()
    code = _call("diffice.commands.counterfactual:cmd_counterfactuals")(list(words))
    if code:
        return code
    times["counterfactuals"] = time.perf_counter() - t1

    from diffice.config import config_from_args

    cfg = config_from_args(words)
    out = Path(cfg.cf.out)
    for line in judges_summary(Path(cfg.paths.runs)):
        print(line)
    total = time.perf_counter() - t0
    print("demo stages: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()) + f"; total {total / 60:.1f} min")
    report = out / "report.html"
    print(f"demo finished: open {report if report.exists() else out}")
    return 0


# ----------------------------------------------------------------------------- experiments


def _respaced_steps(cfg) -> int:
    from diffice.diffusion import space_timesteps

    return len(space_timesteps(int(cfg.diffusion.steps), str(cfg.cf.respacing)))


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-").lower() or "run"


def read_experiment(path: str | Path) -> tuple[dict, dict, dict]:
    """Split an experiment file into (base config layer, runs {label: layer}, options)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: experiment file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(data, dict):
        raise UserError(f"{path}: an experiment file must be a mapping")
    runs = data.pop("runs", None)
    if not isinstance(runs, dict) or not runs:
        raise UserError(f"{path}: key 'runs' must map each row's label to its config keys")
    options = {k: data.pop(k) for k in ("description", "tau_scale", "name") if k in data}
    for label, layer in runs.items():
        if layer is not None and not isinstance(layer, dict):
            raise UserError(f"{path}: runs.{label} must be a mapping of config keys")
    return data, {str(k): (v or {}) for k, v in runs.items()}, options


def _tau_scale(value, preset: str, path) -> int | None:
    """``tau_scale`` is a number, or a mapping preset name -> number with an optional ``default``."""
    if isinstance(value, dict):
        name = Path(preset).stem
        value = value.get(name, value.get("default"))
    if value is None:
        return None
    try:
        scale = int(value)
    except (TypeError, ValueError):
        scale = 0
    if scale < 1:
        raise UserError(f"{path}: tau_scale must be a positive number of steps or a mapping preset -> steps")
    return scale


def row_layer(layer: dict, base: dict, tau_scale: int | None, files: Sequence, overrides: Sequence[str]) -> dict:
    """A row's config layer with its tau mapped from the file's ``tau_scale``-step schedule to
    the same fraction of the active ``cf.respacing`` (``files``: preset first, then extra files)."""
    from omegaconf import OmegaConf

    from diffice.config import load_config

    layer = OmegaConf.to_container(OmegaConf.create(layer), resolve=False)
    tau = (layer.get("cf") or {}).get("tau", (base.get("cf") or {}).get("tau"))
    if tau_scale and tau is not None:
        cfg = load_config([files[0], base, layer, *files[1:]], overrides)
        layer.setdefault("cf", {})["tau"] = max(1, round(int(tau) * _respaced_steps(cfg) / int(tau_scale)))
    return layer


def cmd_experiment(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="diffice experiment",
        description="Run one of the paper's experiments (experiments/*.yaml): train the models if "
        "needed, make the counterfactuals of every row, and write a markdown table in the paper's "
        "columns to {paths.runs}/experiments/NAME/table.md.",
    )
    p.add_argument("experiment", help="experiment file, e.g. experiments/table1.yaml")
    p.add_argument("args", nargs="*", help="extra config files (*.yaml) and key=value overrides")
    p.add_argument("--preset", default="tiny", help="preset name or file (default: tiny)")
    ns = p.parse_intermixed_args(list(argv))

    from diffice.config import load_config, split_args
    from diffice.io import atomic_write_text
    from diffice.report.tables import markdown_report

    base, runs, options = read_experiment(ns.experiment)
    tau_scale = _tau_scale(options.get("tau_scale"), ns.preset, ns.experiment)  # checked before any training
    name = str(options.get("name") or Path(ns.experiment).stem)
    files, overrides = split_args(ns.args)
    preset = _preset_file(ns.preset)
    train_models([preset, *files, *overrides])

    base_cfg = load_config([preset, base, *files], overrides)
    out_root = Path(base_cfg.paths.runs) / "experiments" / name
    rows: list[dict] = []
    for label, layer in runs.items():
        layer = row_layer(layer, base, tau_scale, [preset, *files], overrides)
        run_out = out_root / _slug(label)
        cfg = load_config([preset, base, layer, *files], [*overrides, f"cf.out={run_out}"])
        print(f"[{name}] {label}: {cfg.cf.method}, tau {cfg.cf.tau} of {cfg.cf.respacing}, "
              f"lambda_c {list(cfg.cf.lambda_c)}, lambda_p {cfg.cf.lambda_p}")
        from diffice.config import save_config

        run_out.mkdir(parents=True, exist_ok=True)
        layer_file = run_out.parent / f".{_slug(label)}.yaml"
        save_config(cfg, layer_file)
        code = _call("diffice.commands.counterfactual:cmd_counterfactuals")([str(layer_file)])
        if code:
            return code
        metrics_path = run_out / "metrics.json"
        if not metrics_path.is_file():
            raise UserError(f"{metrics_path}: the run wrote no metrics")
        m = json.loads(metrics_path.read_text())
        m["method"] = label
        rows.append(m)

    head = [f"# {name}", "", str(options.get("description", "")).strip(), "",
            f"Preset `{ns.preset}`; command: `diffice experiment {ns.experiment} --preset {ns.preset}"
            + (" " + " ".join(ns.args) if ns.args else "") + "`", ""]
    table = out_root / "table.md"
    atomic_write_text(table, "\n".join(head) + "\n" + markdown_report(rows))
    print(f"[{name}] table: {table}")
    return 0
