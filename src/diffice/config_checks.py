"""Range checks of the config's counts, limits, batch sizes and step numbers.

The schema (``config.py``) checks types; these rules check values a type cannot: a batch size of
0, a negative limit, a count of frames below one. :func:`check_ranges` runs when a config is
loaded, before any command writes anything, and raises a :class:`~diffice.errors.UserError`
naming the key and its value (exit status 2). ``null`` stays allowed where the schema allows it
(``cf.limit: null`` = every frame).
"""

from __future__ import annotations

import math

from diffice.errors import UserError

# key -> smallest allowed value (whole numbers); "optional" keys may also be null
AT_LEAST: dict[str, int] = {
    "data.batch_size": 1, "data.num_workers": 0, "data.phantom.count": 1, "data.phantom.frames_per_patient": 1,
    "trainer.num_nodes": 1, "trainer.log_every_n_steps": 1, "trainer.checkpoint_every_n_steps": 1,
    "trainer.val_every_n_steps": 1,
    "diffusion.steps": 1,
    "ddpm.max_steps": 1, "ddpm.sample_every_n_steps": 0, "ddpm.sample_count": 1,
    "segmenter.max_steps": 1, "guide.max_steps": 1, "guide.adv_steps": 1, "oracle.max_steps": 1,
    "cf.tau": 1, "cf.iterations": 1, "cf.mask_dilation": 0, "cf.mask_warmup": 0, "cf.batch_size": 1, "cf.limit": 1,
    "synthesis.max_steps": 1, "synthesis.prealign_steps": 0, "synthesis.prealign_width": 1, "synthesis.rounds": 0,
    "synthesis.jump_length": 1, "synthesis.jump_n_sample": 1, "synthesis.edit_dilation": 0,
    "synthesis.count": 1, "synthesis.limit": 1, "synthesis.batch_size": 1,
    "downstream.steps": 1, "downstream.batch_size": 1, "downstream.real_train_limit": 1,
    "downstream.synth_normal_count": 1, "downstream.synth_abnormal_count": 1, "downstream.abnormal_test_count": 1,
    "downstream.synth_layouts": 1, "downstream.synth_per_layout": 1, "downstream.synth_edit_frames": 1,
    "seg_downstream.steps": 1, "seg_downstream.batch_size": 1, "seg_downstream.synthetic_limit": 1,
    "seg_downstream.test_limit": 1,
}
# key -> (low, high) inclusive, for fractions
WITHIN: dict[str, tuple[float, float]] = {
    "data.phantom.sp_fraction": (0.0, 1.0), "ddpm.train_max_t": (0.0, 1.0), "ddpm.full_frame_prob": (0.0, 1.0),
    "synthesis.drop_condition": (0.0, 1.0), "synthesis.drop_structure": (0.0, 1.0), "synthesis.drop_meta": (0.0, 1.0),
    "synthesis.dice_target": (0.0, 1.0), "synthesis.edit_start": (0.0, 1.0),
    "seg_downstream.synthetic_share": (0.0, 1.0),
    "guide.adv_eps": (0.0, 0.5),  # an RMS change per pixel, [-1, 1] units
}
# lists of whole numbers that must all be at least 1
POSITIVE_LISTS = ("data.image_size", "ddpm.patch_size")


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        if node is None or part not in node:
            return KeyError
        node = node[part]
    return node


def check_ranges(cfg, source: str = "config") -> None:
    """UserError ``{source}: key 'KEY': VALUE ...`` for the first value out of range."""
    for key, low in AT_LEAST.items():
        value = _get(cfg, key)
        if value is KeyError or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            what = "null or " * _nullable(cfg, key) + ("a whole number" if low <= 0 else f"at least {low}")
            raise UserError(f"{source}: key '{key}': {value!r} is not allowed; it must be {what}"
                            + (" (0 = none)" if low == 0 and "steps" in key else ""))
    for key, (low, high) in WITHIN.items():
        value = _get(cfg, key)
        if value is KeyError or value is None:
            continue
        if not (isinstance(value, int | float) and math.isfinite(float(value)) and low <= float(value) <= high):
            raise UserError(f"{source}: key '{key}': {value!r} is not allowed; it must lie in [{low:g}, {high:g}]")
    for key in POSITIVE_LISTS:
        value = _get(cfg, key)
        if value is KeyError or value is None:
            continue
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
            raise UserError(f"{source}: key '{key}': {list(value)!r} is not allowed; each value must be at least 1")


def _nullable(cfg, key: str) -> bool:
    from omegaconf import OmegaConf

    section, _, name = key.rpartition(".")
    try:
        node = OmegaConf.select(cfg, section)._get_node(name)
        return bool(node._is_optional())
    except Exception:  # noqa: BLE001 - only the message's wording depends on it
        return False


# Trainer arguments diffice sets itself: a `trainer.KEY` naming one is refused with where to set it.
TRAINER_SET_BY_DIFFICE: dict[str, str] = {
    "max_steps": "set the model's own max_steps (ddpm.max_steps, segmenter.max_steps, guide.max_steps, ...)",
    "val_check_interval": "set trainer.val_every_n_steps", "check_val_every_n_epoch": "set trainer.val_every_n_steps",
    "enable_progress_bar": "set trainer.progress_bar", "default_root_dir": "set paths.runs",
    "logger": "set wandb.mode", "callbacks": "diffice adds its own", "plugins": "diffice adds its own",
    "enable_checkpointing": "diffice writes last.ckpt itself (trainer.checkpoint_every_n_steps)",
}


def check_trainer_args(keys, source: str = "config") -> None:
    """``trainer.KEY`` beyond diffice's own trainer keys goes to ``lightning.Trainer`` as is: each must
    be one of its arguments (``inspect.signature(lightning.Trainer.__init__)``) that diffice does not set
    itself. UserError ``{source}: unknown key 'trainer.KEY'`` otherwise, with the nearest argument."""
    if not keys:
        return
    import difflib
    import inspect

    import lightning

    params = [p for p in inspect.signature(lightning.Trainer.__init__).parameters if p != "self"]
    for key in keys:
        if key in TRAINER_SET_BY_DIFFICE:
            raise UserError(f"{source}: key 'trainer.{key}' is set by diffice; {TRAINER_SET_BY_DIFFICE[key]}")
        if key not in params:
            near = difflib.get_close_matches(str(key), params, n=1)
            hint = f"; did you mean trainer.{near[0]}?" if near else ""
            raise UserError(f"{source}: unknown key 'trainer.{key}' (neither a diffice trainer key nor an argument "
                            f"of lightning.Trainer {lightning.__version__}){hint}")
