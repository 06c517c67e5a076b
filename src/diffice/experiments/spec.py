"""Experiment files (``experiments/*.yaml``) and the helpers every pipeline shares: the preset
file of a name, a row's folder name, one W&B group per invocation, and a row's config layer with
its τ mapped to the preset's schedule."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from diffice.errors import UserError

KINDS = ("counterfactuals", "synthesis", "downstream", "segmentation_downstream")
OPTIONS = ("description", "tau_scale", "name", "kind", "realism", "edits_only", "presets", "paired")


def preset_file(preset: str) -> str:
    """``configs/preset/NAME.yaml`` of a preset name, or the file itself when given one."""
    from diffice.config import configs_dir

    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        return str(path)
    path = configs_dir() / "preset" / f"{preset}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (configs_dir() / "preset").glob("*.yaml"))
        raise UserError(f"--preset {preset}: no such preset (have: {', '.join(names)})")
    return str(path)


def slug(label: str) -> str:
    """A row's folder name: its label in lower case, runs of other characters as one ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-").lower() or "run"


def pipeline_group(words: Sequence[str], prefix: str) -> list[str]:
    """``words`` plus ``wandb.group=<prefix>-<date>-<time>``, so that every stage of one pipeline
    invocation lands in one W&B group; unchanged when the config (a file or a word) already names
    a group, when ``WANDB_RUN_GROUP`` is set, or when W&B is disabled."""
    from diffice.config import config_from_args
    from diffice.tracking import wandb_group, wandb_mode

    cfg = config_from_args(list(words))
    if wandb_group(cfg) or wandb_mode(cfg) == "disabled":
        return list(words)
    return [*words, f"wandb.group={slug(prefix)}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"]


def respaced_steps(cfg) -> int:
    """Steps of the counterfactuals' respaced schedule (``cf.respacing``)."""
    from diffice.diffusion import space_timesteps

    return len(space_timesteps(int(cfg.diffusion.steps), str(cfg.cf.respacing)))


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
    options = {k: data.pop(k) for k in OPTIONS if k in data}
    for pair in options.get("paired") or []:
        if not (isinstance(pair, list) and len(pair) == 2 and all(str(x) in runs for x in pair)):
            raise UserError(f"{path}: paired: each entry must be [ROW_A, ROW_B], two labels under runs (got {pair})")
    if options.get("kind", KINDS[0]) not in KINDS:
        raise UserError(f"{path}: kind '{options['kind']}' is not one of {', '.join(KINDS)}")
    for label, layer in runs.items():
        if layer is not None and not isinstance(layer, dict):
            raise UserError(f"{path}: runs.{label} must be a mapping of config keys")
    return data, {str(k): (v or {}) for k, v in runs.items()}, options


def tau_scale(value, preset: str, path) -> int | None:
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


def row_layer(layer: dict, base: dict, scale: int | None, files: Sequence, overrides: Sequence[str]) -> dict:
    """A row's config layer with its tau mapped from the file's ``tau_scale``-step schedule to
    the same fraction of the active ``cf.respacing`` (``files``: preset first, then extra files)."""
    from omegaconf import OmegaConf

    from diffice.config import load_config

    layer = OmegaConf.to_container(OmegaConf.create(layer), resolve=False)
    tau = (layer.get("cf") or {}).get("tau", (base.get("cf") or {}).get("tau"))
    if scale and tau is not None:
        cfg = load_config([files[0], base, layer, *files[1:]], overrides)
        layer.setdefault("cf", {})["tau"] = max(1, round(int(tau) * respaced_steps(cfg) / int(scale)))
    return layer
