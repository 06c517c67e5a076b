"""Training a diffice model: a Trainer built from config, Lightning's checkpointing of ``last.ckpt``
through an atomic I/O that reads back with the safe loader, the W&B (or CSV) logger whose history survives a
resume, and :func:`fit`, which resumes from ``{paths.runs}/{stage}/last.ckpt``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import DictConfig

from diffice.config import save_config, to_dict, trainer_extras
from diffice.errors import UserError
from diffice.modules.common import LAST, DifficeModule, read_checkpoint, run_dir


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, atomic and safe: a file is serialised in memory, written beside its
    final name and renamed into place (a run killed while saving keeps the previous complete
    checkpoint); a save that fails (a full or read-only disk) removes its partial file and ends the
    run with one line naming the checkpoint and the cause. Files are read with diffice's safe loader
    (``weights_only=True``, kind-agnostic), so resuming a run (``trainer.fit(ckpt_path=...)``) cannot run
    code from the file either."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        import io

        final = Path(path)
        tmp = final.with_name(f".{final.name}.tmp")
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as f:
                f.write(buf.getbuffer())
            os.replace(tmp, final)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            kept = "the previous checkpoint is kept" if final.exists() else "no checkpoint was written"
            raise UserError(f"{final}: cannot write the checkpoint ({err.strerror or err}); {kept}") from err

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        from diffice.nets.weights import torch_load

        return torch_load(Path(path), f"{path}: checkpoint not found", "checkpoint")


class LastCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` keeping only ``last.ckpt`` (every N optimizer steps), which also
    saves the final step when N does not divide it (Lightning's own ``on_train_end`` saves only a run
    that never saved)."""

    def __init__(self, dirpath: Path, every_n_steps: int):
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, every_n_train_steps=max(1, int(every_n_steps)),
                         enable_version_counter=False)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        """Under DDP a failed write (rank zero's: :class:`AtomicCheckpointIO` raises there alone) ends every
        process with its line: rank zero joins the barrier the others wait in, then all agree."""
        error = None
        try:
            super()._save_checkpoint(trainer, filepath)
        except UserError as err:
            if trainer.world_size == 1:
                raise
            error = err
            trainer.strategy.barrier("Trainer.save_checkpoint")  # where the other processes are
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(error is not None, all=False):
            raise error or UserError(f"{filepath}: process 0 could not write the checkpoint; see its line")


def _keep_csv_history(metrics_csv: Path, resume_step: int | None) -> Path | None:
    """Before a CSV logger starts (it deletes ``metrics.csv``): move the file aside, keeping only
    the rows of steps before ``resume_step`` (those after it, logged by the killed run after its
    last checkpoint, are redone). Returns the kept file, or None when there is no history."""
    if resume_step is None or not metrics_csv.is_file():
        return None
    import csv

    from diffice.io import atomic_write_text

    with metrics_csv.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = [r for r in reader if r.get("step", "") == "" or int(float(r["step"])) < resume_step]
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    kept = metrics_csv.with_name(".metrics.history.csv")
    atomic_write_text(kept, buf.getvalue())
    metrics_csv.unlink()
    return kept


class _HistoryWriter(ExperimentWriter):
    """Lightning's CSV writer that starts from ``history`` (the kept rows) instead of deleting
    ``metrics.csv``; new rows are appended after them."""

    def __init__(self, log_dir: str, history: Path | None) -> None:
        super().__init__(log_dir)
        if history is not None and history.is_file():
            import csv

            with history.open(newline="") as f:
                self.metrics_keys = sorted(csv.DictReader(f).fieldnames or [])
            os.replace(history, self.metrics_file_path)
            self._rewrite_with_new_header(self.metrics_keys)

    def _check_log_dir_exists(self) -> None:
        """Lightning's check warns that "previous log files will be deleted" on every resume; the
        history is kept (moved aside and back), so only a stale ``metrics.csv`` is removed, silently."""
        if self._fs.isfile(self.metrics_file_path) and self.metrics_keys == []:
            self._fs.rm_file(self.metrics_file_path)


class _HistoryCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` keeps a resumed run's history (module level: DDP
    spawn pickles the logger)."""

    def __init__(self, save_dir: str, history: Path | None) -> None:
        super().__init__(save_dir=save_dir, name="logs", version="")
        self._history = history

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(self.log_dir, self._history)
        return self._experiment


def _csv_logger(out: Path, resume_step: int | None) -> CSVLogger:
    """Lightning's CSV logger, keeping the history of a resumed run in ``logs/metrics.csv``."""
    history = _keep_csv_history(out / "logs" / ExperimentWriter.NAME_METRICS_FILE, resume_step)
    return _HistoryCSVLogger(str(out), history)


def build_logger(cfg: DictConfig, stage: str, out: Path, resume_step: int | None = None):
    """W&B offline by default; ``wandb.mode=disabled`` (or WANDB_MODE=disabled) logs to CSV instead.

    ``resume_step``: the step of the checkpoint a run resumes from; the CSV log keeps its rows
    of the steps before it (a resumed run's ``metrics.csv`` holds the whole history).
    """
    from diffice.tracking import wandb_mode

    mode = wandb_mode(cfg)
    if mode == "disabled":
        return _csv_logger(out, resume_step)
    if mode not in ("offline", "online"):
        raise UserError(f"wandb.mode: '{mode}' is not one of offline, online, disabled")
    from lightning.pytorch.loggers import WandbLogger

    from diffice.modules.resume import wandb_run_id
    from diffice.tracking import wandb_group

    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(
        id=wandb_run_id(out, resume_step is not None),  # a resumed stage continues its W&B run
        resume="allow",
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        name=f"{cfg.name}-{stage}",
        save_dir=str(out),
        offline=(mode == "offline"),
        config=to_dict(cfg),
        job_type=f"train-{stage}",
        group=wandb_group(cfg),
    )


def build_trainer(
    cfg: DictConfig,
    stage: str,
    max_steps: int,
    callbacks: Sequence[Callback] = (),
    resume_step: int | None = None,
    **overrides: Any,
) -> L.Trainer:
    """A Trainer from ``cfg.trainer`` writing to ``{paths.runs}/{stage}`` (``resume_step``: see
    :func:`build_logger`)."""
    out = run_dir(cfg, stage)
    out.mkdir(parents=True, exist_ok=True)
    t = cfg.trainer
    cbs: list[Callback] = [LastCheckpoint(out, t.checkpoint_every_n_steps), *callbacks]
    kwargs = trainer_kwargs(cfg, out, cbs)
    kwargs.update(
        max_steps=max_steps,
        gradient_clip_val=t.gradient_clip_val or None,
        log_every_n_steps=t.log_every_n_steps,
        check_val_every_n_epoch=None,
        use_distributed_sampler=False,  # the datamodule shards: ResumableSampler's order, resumed by step
        val_check_interval=t.val_every_n_steps,
        logger=build_logger(cfg, stage, out, resume_step),
    )
    kwargs.update(overrides)
    return make_trainer(cfg, kwargs)


def make_trainer(cfg: DictConfig, kwargs: dict[str, Any]) -> L.Trainer:
    """``lightning.Trainer(**kwargs)``; a passed-through ``trainer.*`` value Lightning refuses is one line."""
    try:
        return L.Trainer(**kwargs)
    except (TypeError, ValueError, MisconfigurationException) as err:
        extras = trainer_extras(cfg)
        if not extras:
            raise
        shown = ", ".join(f"trainer.{k}={v!r}" for k, v in extras.items())
        raise UserError(f"trainer: Lightning refused the Trainer arguments {shown} ({str(err).splitlines()[0]})") from err


def trainer_kwargs(cfg: DictConfig, out: Path, callbacks: list[Callback]) -> dict[str, Any]:
    """Trainer arguments every diffice Trainer shares: devices, precision, progress bar, run folder,
    and every other ``trainer.*`` key (a ``lightning.Trainer`` argument, :func:`diffice.config.trainer_extras`).

    ``callbacks`` gets the rich progress bar appended when ``trainer.progress_bar`` is on.
    """
    t = cfg.trainer
    if t.progress_bar:
        from diffice.modules.resume import StepsProgressBar

        callbacks.append(StepsProgressBar(leave=True))
    return dict(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=bool(t.progress_bar),
        enable_model_summary=False,
        default_root_dir=str(out),
        callbacks=callbacks,
        **trainer_extras(cfg),
    )


class SaveConfigOnStart(Callback):
    """Write the run's ``config.yaml`` once training starts (the data set up and checked), so
    that a run refused before then leaves no config behind."""

    def __init__(self, cfg: DictConfig, path: Path):
        self.cfg, self.path = cfg, Path(path)
        self.started = False

    def on_train_start(self, trainer, pl_module) -> None:
        self.started = True
        if trainer.is_global_zero:
            save_config(self.cfg, self.path)


def stage_lock(cfg: DictConfig, stage: str):
    """The lock of the training run folder ``{paths.runs}/{stage}`` (:func:`diffice.runlock.run_lock`):
    a second training into a folder one holds is refused in one line naming the holder (exit 2).
    Re-entrant: the ``train_*`` functions hold it around the whole stage, :func:`fit` takes it again."""
    from diffice.runlock import run_lock

    return run_lock(run_dir(cfg, stage), f"diffice train-{stage}")


def fit(cfg: DictConfig, stage: str, module: DifficeModule, datamodule, max_steps: int, **overrides) -> Path:
    """Fit ``module``, resuming from ``{run}/last.ckpt`` when it exists; returns that path.

    The run folder is locked (:func:`stage_lock`) throughout. The resolved config is saved as
    ``{run}/config.yaml`` once training starts. A checkpoint
    of another kind in the folder is refused rather than overwritten; the checkpoint is read
    with the safe loader (and its weights checked) before Lightning resumes from it, and
    Lightning reads it through :class:`AtomicCheckpointIO` as well. A run that fails before
    starting to train (a data error found at set-up) in a folder that did not exist (or was
    empty) removes what it wrote there again (the lock removes the folder it made).
    """
    from diffice.runlock import LOCK_NAME

    out = run_dir(cfg, stage)
    with stage_lock(cfg, stage):
        last = out / LAST
        fresh = not out.is_dir() or not any(p.name != LOCK_NAME for p in out.iterdir())
        ckpt_path, resume_step = None, None
        if last.exists():
            resume_step = int(read_checkpoint(last, module.kind).get("global_step", 0))
            ckpt_path = str(last)
        on_start = SaveConfigOnStart(cfg, out / "config.yaml")
        callbacks = [*overrides.pop("callbacks", ()), on_start]
        trainer = build_trainer(cfg, stage, max_steps, callbacks=callbacks, resume_step=resume_step, **overrides)
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
            log_training_artifacts(trainer, cfg, module, last)
        except Exception:
            if fresh and not on_start.started and trainer.is_global_zero and not last.exists():
                _empty(out, keep=LOCK_NAME)
            raise
        finally:
            finish_wandb()
    return last


def _empty(folder: Path, keep: str) -> None:
    """Remove everything in ``folder`` but ``keep`` (the lock, which its holder removes)."""
    import shutil

    for p in folder.iterdir():
        if p.name == keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def log_training_artifacts(trainer: L.Trainer, cfg: DictConfig, module: DifficeModule, last: Path) -> None:
    """With a W&B logger: the run declares the data set and the checkpoints the model was built
    from (``module.input_checkpoints()``) as used, and logs ``last`` as the ``model`` artifact
    named by the module's kind (a reference to the file; metadata kind, steps, config digest).
    A W&B failure is a warning: the checkpoint is written."""
    from lightning.pytorch.loggers import WandbLogger

    logger = trainer.logger
    if not isinstance(logger, WandbLogger) or not trainer.is_global_zero or trainer.interrupted or not last.is_file():
        return
    from diffice.tracking import config_digest, log_model_artifact, use_checkpoint, use_dataset, warn

    try:
        run = logger.experiment
        use_dataset(run, cfg)
        for kind, path in module.input_checkpoints().items():
            use_checkpoint(run, path, kind)
        steps = int(trainer.global_step)
        log_model_artifact(run, last, module.kind, {"kind": module.kind, "steps": steps, "run_dir": str(trainer.default_root_dir),
                                                     "config_digest": config_digest(to_dict(module.cfg))},
                           aliases=[f"step-{steps}"])
    except Exception as err:  # noqa: BLE001 - W&B is a copy; the checkpoint is written
        warn(f"W&B artifacts of {last} not logged ({type(err).__name__}: {err})")


def finish_wandb() -> None:
    """Close the active W&B run, so that the next stage in this process gets a run of its own."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        from diffice.tracking import finish_run

        finish_run(wandb.run)  # returns once the run's local folder is complete
