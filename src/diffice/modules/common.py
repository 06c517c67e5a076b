"""What every trained model shares: checkpoints that carry their kind and config, a Trainer
built from config, atomic resumable checkpointing, and the W&B (or CSV) logger.

A checkpoint written by diffice holds, besides Lightning's own keys::

    checkpoint["diffice"] = {"kind": "ddpm" | "segmenter" | "classifier" | "oracle",
                             "config": <resolved config as a dict>, "version": "0.1.0"}

so that :func:`load_checkpoint` can rebuild the model from the path alone and refuse a
checkpoint of the wrong kind by name.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from diffice import __version__
from diffice.config import from_dict, save_config, to_dict
from diffice.errors import UserError
from diffice.nets.weights import read_checkpoint  # noqa: F401 - also imported from here by modules and tests

# kind -> "module:Class" of the LightningModule that owns that kind of checkpoint.
KINDS: dict[str, str] = {
    "ddpm": "diffice.modules.ddpm:DDPMModule",
    "segmenter": "diffice.modules.segmenter:SegmenterModule",
    "classifier": "diffice.modules.classifier:ClassifierModule",
    "oracle": "diffice.modules.oracle:OracleModule",
}

LAST = "last.ckpt"


class DifficeModule(L.LightningModule):
    """Base LightningModule: keeps the resolved config and tags checkpoints with ``kind``.

    Subclasses set ``kind`` and take ``(cfg, *, load_pretrained=True)``; ``load_pretrained``
    is False when the module is being rebuilt from its own checkpoint, so that no external
    weight file (e.g. a segmenter checkpoint that the classifier was built on) is needed then.
    """

    kind: ClassVar[str] = ""

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.cfg = cfg

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["diffice"] = {"kind": self.kind, "config": to_dict(self.cfg), "version": __version__}


def module_class(kind: str) -> type[DifficeModule]:
    mod, cls = KINDS[kind].split(":")
    return getattr(importlib.import_module(mod), cls)


def load_checkpoint(path: str | os.PathLike, kind: str, map_location: str | torch.device = "cpu") -> DifficeModule:
    """Rebuild the LightningModule of ``kind`` from a checkpoint path alone, in eval mode."""
    ckpt = read_checkpoint(path, kind)
    cfg = from_dict(ckpt["diffice"]["config"])
    module = module_class(kind)(cfg, load_pretrained=False)
    from diffice.modules.pack import unpack_state

    try:
        module.load_state_dict(unpack_state(kind, ckpt["state_dict"]))
    except RuntimeError as err:
        raise UserError(f"{path}: weights do not fit the {kind} model its config describes ({str(err).splitlines()[0]})") from err
    if hasattr(module, "on_load_checkpoint"):
        module.on_load_checkpoint(ckpt)
    return module.to(map_location).eval()


def checkpoint_config(path: str | os.PathLike, kind: str | None = None) -> DictConfig:
    return from_dict(read_checkpoint(path, kind)["diffice"]["config"])


# ----------------------------------------------------------------------------- runs


def run_dir(cfg: DictConfig, stage: str) -> Path:
    """The output folder of a training stage: ``{paths.runs}/{stage}``."""
    return Path(cfg.paths.runs) / stage


class AtomicCheckpoint(Callback):
    """Save ``last.ckpt`` every N optimizer steps and at the end of training, atomically.

    The file is written beside its final name and renamed into place, so a run killed while
    saving keeps the previous complete checkpoint and resumes from it.
    """

    def __init__(self, dirpath: Path, every_n_steps: int):
        self.dirpath = Path(dirpath)
        self.every = max(1, int(every_n_steps))
        self._last_saved = -1

    def save(self, trainer: L.Trainer) -> None:
        if trainer.global_step == self._last_saved:
            return
        final = self.dirpath / LAST
        tmp = self.dirpath / f".{LAST}.tmp"
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, final)
        trainer.strategy.barrier("diffice.atomic_checkpoint")
        self._last_saved = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > 0 and trainer.global_step % self.every == 0:
            self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer)


class NaNGuard(Callback):
    """Stop training with a clear message when the loss becomes NaN or infinite.

    The last good checkpoint is left untouched (nothing is saved after the bad step).
    Modules report their loss as ``outputs['loss']`` from ``training_step``.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and not math.isfinite(float(loss)):
            raise UserError(
                f"{pl_module.kind}: loss became {float(loss)} at step {trainer.global_step}; "
                f"the last good checkpoint is kept in {trainer.default_root_dir} "
                "(lower the learning rate or check the data)"
            )


def build_logger(cfg: DictConfig, stage: str, out: Path):
    """W&B offline by default; ``wandb.mode=disabled`` (or WANDB_MODE=disabled) logs to CSV instead."""
    mode = os.environ.get("WANDB_MODE", cfg.wandb.mode)
    if mode == "disabled":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(out), name="logs", version="")
    from lightning.pytorch.loggers import WandbLogger

    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        name=f"{cfg.name}-{stage}",
        save_dir=str(out),
        offline=(mode == "offline"),
        config=to_dict(cfg),
        job_type=stage,
    )


def build_trainer(
    cfg: DictConfig,
    stage: str,
    max_steps: int,
    callbacks: Sequence[Callback] = (),
    **overrides: Any,
) -> L.Trainer:
    """A Trainer from ``cfg.trainer`` writing to ``{paths.runs}/{stage}``."""
    out = run_dir(cfg, stage)
    out.mkdir(parents=True, exist_ok=True)
    t = cfg.trainer
    # NaNGuard first: a NaN step must stop training before AtomicCheckpoint could save its weights
    cbs: list[Callback] = [NaNGuard(), AtomicCheckpoint(out, t.checkpoint_every_n_steps), *callbacks]
    kwargs = trainer_kwargs(cfg, out, cbs)
    kwargs.update(
        max_steps=max_steps,
        gradient_clip_val=t.gradient_clip_val or None,
        log_every_n_steps=t.log_every_n_steps,
        check_val_every_n_epoch=None,
        val_check_interval=t.val_every_n_steps,
        logger=build_logger(cfg, stage, out),
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def trainer_kwargs(cfg: DictConfig, out: Path, callbacks: list[Callback]) -> dict[str, Any]:
    """Trainer arguments every diffice Trainer shares: devices, precision, progress bar, run folder.

    ``callbacks`` gets the rich progress bar appended when ``trainer.progress_bar`` is on.
    """
    t = cfg.trainer
    if t.progress_bar:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar(leave=True))
    return dict(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        enable_checkpointing=False,
        enable_progress_bar=bool(t.progress_bar),
        enable_model_summary=False,
        default_root_dir=str(out),
        callbacks=callbacks,
    )


def fit(cfg: DictConfig, stage: str, module: DifficeModule, datamodule, max_steps: int, **overrides) -> Path:
    """Fit ``module``, resuming from ``{run}/last.ckpt`` when it exists; returns that path.

    The resolved config is saved as ``{run}/config.yaml``. A checkpoint of another kind in the
    folder is refused rather than overwritten.
    """
    out = run_dir(cfg, stage)
    last = out / LAST
    ckpt_path = None
    if last.exists():
        read_checkpoint(last, module.kind)
        ckpt_path = str(last)
    trainer = build_trainer(cfg, stage, max_steps, **overrides)
    if trainer.is_global_zero:
        save_config(cfg, out / "config.yaml")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:
        finish_wandb()
    return last


def finish_wandb() -> None:
    """Close the active W&B run, so that the next stage in this process gets a run of its own."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def log_image(module: L.LightningModule, key: str, image, caption: str | None = None) -> None:
    """Log one image (HxW or HxWx3 uint8 array) to W&B if that is the logger, else save a PNG."""
    import numpy as np

    trainer = module.trainer
    if trainer is None or not trainer.is_global_zero:
        return
    step = trainer.global_step
    logger = trainer.logger
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        WandbLogger = ()  # type: ignore[assignment]
    if isinstance(logger, WandbLogger):
        logger.log_image(key=key, images=[np.asarray(image)], caption=[caption] if caption else None, step=step)
    else:
        from diffice.io import save_png

        save_png(Path(trainer.default_root_dir) / "images" / f"{key.replace('/', '_')}_{step:07d}.png", np.asarray(image))
