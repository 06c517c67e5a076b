"""Configuration: a dataclass schema, and load / merge / save of YAML files plus overrides.

Merge order (later wins)::

    schema defaults == configs/defaults.yaml -> preset -> data config -> experiment -> key=value

The schema below is the single source of truth for which keys exist and their types;
``configs/defaults.yaml`` mirrors it with a comment per key (a test keeps the two equal).
An unknown key, a wrong type or a missing required value raises :class:`UserError` naming the file
and the key. A ``trainer`` key beyond diffice's own goes to ``lightning.Trainer`` (:func:`trainer_extras`)
when it is one of that Trainer's arguments, and is refused otherwise.

Image sizes are ``[height, width]``; paths relative to the working directory; ``${paths.runs}`` resolved at load."""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from diffice.config_checks import check_ranges, check_trainer_args
from diffice.errors import UserError


# ----------------------------------------------------------------------------- schema
@dataclass
class PathsConfig:
    runs: str = "runs"


@dataclass
class PhantomConfig:
    count: int = 1579
    sp_fraction: float = 0.152
    frames_per_patient: int = 4
    seed: int = 0


@dataclass
class DataConfig:
    source: str = "phantom"
    root: str | None = None
    manifest: str | None = None
    image_size: list[int] = field(default_factory=lambda: [224, 288])
    classes: list[str] = field(default_factory=lambda: ["background", "head", "bone", "th", "csp", "fp"])
    concepts: list[str] = field(default_factory=lambda: ["qs_th", "qs_csp", "qs_fp", "qs_bone"])
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    split_seed: int = 0
    labelled: int | None = None
    labelled_seed: int = 0
    batch_size: int = 16
    num_workers: int | None = None
    augment: bool = True
    phantom: PhantomConfig = field(default_factory=PhantomConfig)


@dataclass
class TrainerConfig:  # any other trainer.KEY that is a lightning.Trainer argument goes to the Trainer as is
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    gradient_clip_val: float = 1.0
    log_every_n_steps: int = 50
    checkpoint_every_n_steps: int = 1000
    val_every_n_steps: int = 1000
    progress_bar: bool = True


@dataclass
class WandbConfig:
    mode: str = "offline"
    project: str = "diffice"
    entity: str | None = None
    group: str | None = None


@dataclass
class UNetConfig:
    model_channels: int = 128
    channel_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4, 4])
    num_res_blocks: int = 2
    attention_resolutions: list[int] = field(default_factory=lambda: [32, 16, 8])
    num_head_channels: int = 64
    dropout: float = 0.0
    resblock_updown: bool = True
    use_scale_shift_norm: bool = True
    coord_channels: bool = False


@dataclass
class DiffusionConfig:
    steps: int = 1000
    noise_schedule: str = "linear"
    learn_sigma: bool = True
    timestep_respacing: str = "400"
    vb_weight: float = 0.001


@dataclass
class DDPMConfig:
    lr: float = 1e-4
    weight_decay: float = 0.05
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    train_max_t: float = 1.0
    patch_size: list[int] | None = None
    full_frame_prob: float = 0.25
    init_ckpt: str | None = None
    max_steps: int = 300000
    sample_every_n_steps: int = 5000
    sample_count: int = 8


@dataclass
class SegmenterConfig:
    arch: str = "unet"
    encoder: str = "resnet34"
    encoder_weights: str | None = None
    decoder_channels: list[int] | None = None
    lr: float = 1e-3
    max_steps: int = 20000


@dataclass
class GuideConfig:
    sononet: int = 16
    segmenter_ckpt: str = "${paths.runs}/segmenter/last.ckpt"
    grad_through_segmenter: bool = True
    segmenter_classes: list[str] | None = None
    pos_weight: float | None = None
    x0_prob: float = 0.0
    adv_eps: float = 0.0
    adv_steps: int = 1
    ddpm_ckpt: str = "${paths.runs}/ddpm/last.ckpt"
    pretrained: str | None = None
    raw_channel: bool = False
    lr: float = 1e-3
    backbone_lr: float | None = None
    init_ckpt: str | None = None
    max_steps: int = 10000
    calibrate: str = "train+val"


@dataclass
class OracleConfig:
    encoder: str = "resnet18"
    decoder_channels: list[int] | None = None
    qs_target: str = "label"
    seg_weight: float = 1.0
    lr: float = 1e-3
    max_steps: int = 10000


@dataclass
class FeaturesConfig:
    perceptual: str = "ddpm"
    fsd: str = "oracle"
    perceptual_weights: str | None = None
    sononet_weights: str | None = None
    inception_weights: str | None = None


@dataclass
class CounterfactualConfig:
    method: str = "diff-ice"
    ddpm_ckpt: str = "${paths.runs}/ddpm/last.ckpt"
    guide_ckpt: str = "${paths.runs}/classifier/last.ckpt"
    oracle_ckpt: str = "${paths.runs}/oracle/last.ckpt"
    respacing: str = "400"
    tau: int = 120
    iterations: int = 5
    lambda_c: list[float] = field(default_factory=lambda: [40.0, 60.0, 80.0])
    lambda_p: float = 30.0
    lambda_search: str = "restart"
    retry_iterations: int = 1
    adaptive: bool = False
    stop_threshold: float = 0.9
    clip_denoised: bool = True
    noise_convention: str = "diffice"
    encode: str = "noise"
    grad_at: str = "current"
    grad_sigma: float = 0.0
    mask: bool = False
    mask_threshold: float = 0.15
    mask_dilation: int = 5
    mask_warmup: int = 5
    sparse: str = "none"
    sparse_threshold: float = 0.1
    sparse_sigma: float = 2.0
    sparse_dilation: int = 2
    sparse_opening: Any = 0  # a pixel count or a list of them, sparsest first
    sparse_tau: int = 10
    sparse_guided: bool = True
    sparse_share: float = 0.25
    batch_size: int = 10
    net_batch: int | None = 10
    autocast: str = "none"
    ids: str | None = None
    split: str = "test"
    label: str = "NSP"
    limit: int | None = None
    out: str = "${paths.runs}/counterfactuals"


@dataclass
class SynthesisConfig:
    lr: float = 1.0e-4
    max_steps: int = 200000
    init_ckpt: str | None = None
    drop_condition: float = 0.1
    drop_structure: float = 0.1
    drop_meta: float = 0.1
    offset_noise: float = 0.0
    prealign: bool = True
    prealign_steps: int = 2000
    prealign_width: int = 32
    guidance: float = 2.0
    respacing: str = "100"
    two_stage: bool = False
    stage1_guidance: float = 3.0
    stage2_guidance: float = 1.5
    stage2_range: list[float] = field(default_factory=lambda: [0.2, 0.5])
    dice_target: float = 0.85
    rounds: int = 2
    repaint: bool = True
    jump_length: int = 10
    jump_n_sample: int = 2
    edit_dilation: int = 3
    edit_start: float = 1.0
    ckpt: str = "${paths.runs}/synthesis/last.ckpt"
    segmenter_ckpt: str | None = "${cf.oracle_ckpt}"
    judge_ckpt: str | None = "${paths.runs}/segmenter/last.ckpt"
    count: int = 4
    limit: int | None = 16
    edits: list[str] = field(default_factory=lambda: ["remove:csp", "grow:th:2"])
    batch_size: int = 16
    net_batch: int | None = 16
    autocast: str = "none"
    anchor: str = "prealign"
    anchor_factor: int = 8
    anchor_until: float = 0.0
    split: str = "test"
    label: str | None = None
    out: str = "${paths.runs}/synthesis-samples"


@dataclass
class DownstreamConfig:
    models: list[str] = field(default_factory=lambda: [
        "resnet18", "densenet121", "efficientnet_b0", "mobilenetv3_small_100", "convnext_atto", "vit_tiny_patch16_224"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1.0e-3
    weight_decay: float = 0.05
    schedule: str = "cosine"
    warmup: float = 0.05
    augment: bool = True
    flips: bool = False
    label_smoothing: float = 0.0
    scale: float = 1.0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    recipes: dict[str, Any] = field(default_factory=dict)
    balance: bool = True
    synthetic_share: float | None = 0.5
    image_size: list[int] = "${data.image_size}"  # type: ignore[assignment]
    real_train_limit: int | None = 200
    synth_normal_count: int | None = 1000
    synth_abnormal_count: int | None = 1000
    synthetic_negatives: bool = True
    abnormal_test_count: int = 600
    upper_bound_count: int = 0
    synth_layouts: int = 500
    synth_per_layout: int = 2
    synth_edit_frames: int = 400
    paired_negatives: bool = True
    out: str = "${paths.runs}/downstream"


@dataclass
class SegDownstreamConfig:
    labelled: list[Any] = field(default_factory=lambda: [50, 100, "all"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    synthetic: str | None = "${paths.runs}/synthesis-hc18/labelled-{n}-seed-{seed}"
    synthetic_limit: int | None = None
    synthetic_share: float = 0.5
    steps: int = 600
    batch_size: int = 16
    lr: float = 1.0e-3
    augment: bool = True
    test_limit: int | None = None


@dataclass
class Config:
    name: str = "diffice"
    seed: int = 0
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    ddpm: DDPMConfig = field(default_factory=DDPMConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    guide: GuideConfig = field(default_factory=GuideConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    cf: CounterfactualConfig = field(default_factory=CounterfactualConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    seg_downstream: SegDownstreamConfig = field(default_factory=SegDownstreamConfig)


# ----------------------------------------------------------------------------- loading


def configs_dir() -> Path:
    """The project's ``configs/`` folder (override with ``DIFFICE_CONFIGS``)."""
    return Path(os.environ.get("DIFFICE_CONFIGS") or Path(__file__).resolve().parents[2] / "configs")


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None) or ""
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, ConfigKeyError):
        return f"unknown key '{key}'" if key else msg
    return f"key '{key}': {msg}" if key else msg


def _read_yaml(path: Path, text: str | None = None) -> DictConfig:  # text: the file's content, if already read
    if text is None and not path.is_file():
        raise UserError(f"{path}: config file not found")
    return OmegaConf.create(copy.deepcopy(_parse_yaml(str(path), path.read_text() if text is None else text)))


@functools.lru_cache(maxsize=256)
def _parse_yaml(path: str, text: str) -> dict:
    """A config file's mapping, parsed once per (file, content)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from err
    if data is not None and not isinstance(data, dict):
        raise UserError(f"{path}: a config file must hold a mapping of keys, not {type(data).__name__}")
    return data or {}


@functools.lru_cache(maxsize=4)
def _base(defaults: str | None = None, text: str = "") -> DictConfig:
    """Schema (unknown keys refused but under ``trainer``: :func:`_check_trainer`) + defaults.yaml, once per content."""
    cfg: DictConfig = OmegaConf.structured(Config)
    OmegaConf.set_struct(cfg.trainer, False)
    return cfg if defaults is None else _merge(cfg, _read_yaml(Path(defaults), text), defaults)


def trainer_extras(cfg: DictConfig) -> dict[str, Any]:
    """The ``trainer.*`` keys that are not diffice's own: ``lightning.Trainer`` arguments, as plain values."""
    t = OmegaConf.to_container(cfg.trainer, resolve=True)
    return {k: v for k, v in t.items() if k not in TrainerConfig.__dataclass_fields__}  # type: ignore[union-attr]


def _merge(base: DictConfig, other: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise UserError(f"{source}: {_describe(err)}") from err


def _check_trainer(layer: DictConfig, source: str) -> None:
    if isinstance(layer.get("trainer"), DictConfig):  # each other trainer.KEY: a lightning.Trainer argument
        check_trainer_args([k for k in layer.trainer if k not in TrainerConfig.__dataclass_fields__], source)


def load_config(files: Sequence[str | os.PathLike | dict | DictConfig] = (), overrides: Sequence[str] = (), *,
                use_defaults_file: bool = True) -> DictConfig:
    """Build the resolved config: schema -> defaults.yaml -> files in order -> overrides."""
    defaults = configs_dir() / "defaults.yaml"
    base = _base(str(defaults), defaults.read_text()) if use_defaults_file and defaults.is_file() else _base()
    layers = [(OmegaConf.create(f), "experiment") if isinstance(f, dict | DictConfig)  # an in-memory layer
              else (_read_yaml(Path(f)), str(f)) for f in files]
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}': expected key=value")
        try:
            layers.append((OmegaConf.from_dotlist([item]), f"override '{item.split('=', 1)[0]}'"))
        except OmegaConfBaseException as err:
            raise UserError(f"override '{item}': {_describe(err)}") from err
    try:  # one merge, one copy of the base; a layer that does not fit is then found and named one by one
        cfg: DictConfig = OmegaConf.merge(base, *(layer for layer, _ in layers))  # type: ignore[assignment]
    except OmegaConfBaseException:
        cfg = base
        for layer, source in layers:
            cfg = _merge(cfg, layer, source)
    for layer, source in layers:
        _check_trainer(layer, source)
    try:
        if missing := sorted(OmegaConf.missing_keys(cfg)):  # a schema key without a default ('???' in a file: no change)
            raise UserError(f"config: required key '{missing[0]}' has no value; set it with {missing[0]}=...")
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise UserError(f"config: {_describe(err)}") from err
    OmegaConf.set_readonly(cfg, False)
    check_ranges(cfg)  # counts, limits, batch sizes: a nonsense value named before anything is written
    return cfg


def split_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split positional CLI words into config files and key=value overrides."""
    files, overrides = [], []
    for a in args:
        if not a.endswith((".yaml", ".yml")) and "=" not in a:
            raise UserError(f"argument '{a}': expected a config file (*.yaml) or a key=value override")
        (files if a.endswith((".yaml", ".yml")) else overrides).append(a)
    return files, overrides


def config_from_args(args: Sequence[str]) -> DictConfig:
    return load_config(*split_args(args))


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def from_dict(data: dict) -> DictConfig:
    """Rebuild a validated config from a plain dict (as stored in a checkpoint)."""
    return _merge(_base(), OmegaConf.create(data), "stored config")


def save_config(cfg: DictConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config atomically as YAML."""
    from diffice.io import atomic_write_text

    return atomic_write_text(Path(path), to_yaml(cfg))
