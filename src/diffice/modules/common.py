"""What every trained model shares: checkpoints that carry their kind and config, its run folder,
and logged images (the Trainer, its checkpointing and loggers are :mod:`diffice.modules.training`).

A checkpoint written by diffice holds, besides Lightning's own keys::

    checkpoint["diffice"] = {"kind": "ddpm" | "segmenter" | "classifier" | "oracle" | "synthesis",
                             "config": <resolved config as a dict>, "version": "0.1.0"}

so that :func:`load_checkpoint` can rebuild the model from the path alone and refuse a
checkpoint of the wrong kind by name.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig

from diffice import __version__
from diffice.config import from_dict, to_dict
from diffice.errors import UserError
from diffice.nets.weights import read_checkpoint  # noqa: F401 - also imported from here by modules and tests

# kind -> "module:Class" of the LightningModule that owns that kind of checkpoint.
KINDS: dict[str, str] = {
    "ddpm": "diffice.modules.ddpm:DDPMModule",
    "segmenter": "diffice.modules.segmenter:SegmenterModule",
    "classifier": "diffice.modules.classifier:ClassifierModule",
    "oracle": "diffice.modules.oracle:OracleModule",
    "synthesis": "diffice.modules.synthesis:SynthesisModule",
}

LAST = "last.ckpt"


class DifficeModule(L.LightningModule):
    """Base LightningModule: keeps the resolved config and tags checkpoints with ``kind``.

    Subclasses set ``kind`` and take ``(cfg, *, load_pretrained=True)``; ``load_pretrained``
    is False when the module is being rebuilt from its own checkpoint, so that no external
    weight file (e.g. a segmenter checkpoint that the classifier was built on) is needed then.
    ``cfg`` may be the plain dict a checkpoint stores (:func:`as_config`).

    The hyperparameters (``save_hyperparameters``) are ``{"cfg": <the resolved config as plain
    dicts, lists, strings and numbers>, "load_pretrained": False}``, so Lightning's own
    ``Kind.load_from_checkpoint(path)`` rebuilds the module from the file alone (and reads it with
    ``weights_only=True``); :func:`load_checkpoint` does the same, and takes pack files too.
    """

    kind: ClassVar[str] = ""

    def __init__(self, cfg: DictConfig | dict):
        super().__init__()
        self.cfg = as_config(cfg)
        self.save_hyperparameters({"cfg": to_dict(self.cfg), "load_pretrained": False}, logger=False)

    def pool_frames(self, values: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-frame validation outputs (first dimension: frames) of every process, each frame once, in the
        order of its data-set index: what one process sees. The validation loader's DistributedSampler
        (:meth:`diffice.data.DiffIceDataModule.loader`) deals the frames out in turn and pads the last round
        by repeating frames, so the gathered rows are deduplicated by ``index``. One process: ``values`` as they are (already in index order)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return values
        gathered = self.all_gather({k: v.to(self.device) for k, v in {**values, "index": index}.items()})  # NCCL: on the device
        flat = {k: v.reshape(-1, *v.shape[2:]).cpu() for k, v in gathered.items()}
        _, first = np.unique(flat.pop("index").numpy(), return_index=True)
        keep = torch.from_numpy(first)
        return {k: v[keep] for k, v in flat.items()}

    def on_before_backward(self, loss: torch.Tensor) -> None:
        """Stop training with one line when the loss is NaN or infinite: before its backward pass, so neither
        the weights nor ``last.ckpt`` see it. Every process agrees (one all-reduce), so a NaN on one rank
        ends them all instead of leaving the others waiting for its gradients."""
        mine = not bool(torch.isfinite(loss.detach()))
        many = self._trainer is not None and self.trainer.world_size > 1
        bad = self.trainer.strategy.reduce_boolean_decision(mine, all=False) if many else mine
        if bad:
            section = "guide" if self.kind == "classifier" else self.kind
            where = self.trainer.default_root_dir if self._trainer is not None else "the run folder"
            what = f"loss became {float(loss.detach())}" if mine else "loss became NaN or infinite on another process"
            raise UserError(f"{self.kind}: {what} at step {self.global_step}; the last good checkpoint is kept in {where} "
                            f"(lower {section}.lr or check the data)")

    def input_checkpoints(self) -> dict[str, str]:
        """The checkpoints this model was built from, kind -> path (W&B lineage: the training run
        declares them as used artifacts). None by default."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        config = to_dict(self.cfg)
        checkpoint["diffice"] = {"kind": self.kind, "config": config, "version": __version__}
        # the config as it is now (one object, stored once), never a file to load weights from
        checkpoint["hyper_parameters"] = {"cfg": config, "load_pretrained": False}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Seed torch's generators from (seed, step, rank) before each step: the step's random
        draws (timesteps, noise, dropout) are a function of the step alone, so a run killed and
        resumed at any checkpoint trains exactly as an uninterrupted one (the data order comes
        from ``ResumableSampler``; the other state from the checkpoint). Under gradient accumulation the
        batches of one step draw apart (their place in the step joins the seed)."""
        rank = self.trainer.global_rank if self._trainer is not None else 0
        k = int(self.trainer.accumulate_grad_batches) if self._trainer is not None else 1
        micro = (batch_idx % k) * 7919 if k > 1 else 0
        torch.manual_seed((int(self.cfg.seed) * 1_000_003 + int(self.global_step) * 1009 + rank + micro) % (2**63 - 1))


def as_config(cfg: DictConfig | dict) -> DictConfig:
    """``cfg`` itself, or the validated config of a plain dict (a checkpoint's hyperparameters)."""
    return from_dict(cfg) if isinstance(cfg, dict) else cfg


def module_class(kind: str) -> type[DifficeModule]:
    mod, cls = KINDS[kind].split(":")
    return getattr(importlib.import_module(mod), cls)


def load_checkpoint(path: str | os.PathLike, kind: str | None, map_location: str | torch.device = "cpu") -> DifficeModule:
    """Rebuild the LightningModule of ``kind`` from a checkpoint path alone, in eval mode
    (``kind=None``: whatever kind the file says it is; ``module.kind`` tells which)."""
    ckpt = read_checkpoint(path, kind)
    kind = kind or ckpt["diffice"]["kind"]
    if kind not in KINDS:
        raise UserError(f"{path}: a '{kind}' checkpoint, which is not a model kind diffice knows")
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
