"""W&B runs from the config: the mode, the group, ``wandb.init``, the run's local folder and
artifact staging inside it."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from diffice.errors import UserError

MODEL_KINDS = ("ddpm", "segmenter", "classifier", "oracle")


def wandb_mode(cfg) -> str:
    """``WANDB_MODE`` if set, else ``cfg.wandb.mode`` (offline when there is no config); W&B's old
    names ``dryrun`` and ``run`` read as offline and online."""
    mode = os.environ.get("WANDB_MODE") or (str(cfg.wandb.mode) if cfg is not None else "offline")
    return {"dryrun": "offline", "run": "online"}.get(mode, mode)


def wandb_group(cfg) -> str | None:
    """The run group: ``cfg.wandb.group``, else ``WANDB_RUN_GROUP``, else None (no group)."""
    group = None
    with contextlib.suppress(AttributeError, KeyError):
        group = cfg.wandb.group
    return str(group) if group else (os.environ.get("WANDB_RUN_GROUP") or None)


def init_run(cfg, *, name: str, job_type: str, dir: str | os.PathLike):
    """``wandb.init`` from the config (mode, project, entity, group), or None when disabled.

    The run's files go to ``{dir}/wandb/offline-run-…`` (offline) or ``{dir}/wandb/run-…``.
    """
    mode = wandb_mode(cfg)
    if mode == "disabled":
        return None
    if mode not in ("offline", "online"):
        raise UserError(f"wandb.mode: '{mode}' is not one of offline, online, disabled")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    from diffice.config import to_dict

    Path(dir).mkdir(parents=True, exist_ok=True)
    return wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity, dir=str(dir), mode=mode, name=name,
                      job_type=job_type, group=wandb_group(cfg), config=to_dict(cfg), reinit="finish_previous")


def run_folder(run) -> Path:
    """The run's local folder (``…/wandb/offline-run-<time>-<id>``): the parent of ``run.dir``."""
    return Path(run.dir).parent


def is_offline(run) -> bool:
    return bool(getattr(run, "offline", False) or getattr(getattr(run, "settings", None), "_offline", False))


@contextlib.contextmanager
def staged_in_run(run) -> Iterator[Path]:
    """Stage the artifact files added inside this block in the run's folder
    (``<run folder>/artifacts/staging``) instead of ``$WANDB_DATA_DIR`` (home by default)."""
    folder = run_folder(run)
    before = os.environ.get("WANDB_DATA_DIR")
    os.environ["WANDB_DATA_DIR"] = str(folder)
    (folder / "artifacts" / "staging").mkdir(parents=True, exist_ok=True)
    try:
        yield folder / "artifacts" / "staging"
    finally:
        if before is None:
            os.environ.pop("WANDB_DATA_DIR", None)
        else:
            os.environ["WANDB_DATA_DIR"] = before


def slug(text: str) -> str:
    """An artifact-safe name: letters, digits, ``-``, ``_`` and ``.``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
