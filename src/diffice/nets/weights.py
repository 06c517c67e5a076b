"""Reading weight files and checkpoints from disk, with one clear line for every mistake.

Nothing is downloaded: a config key names the file. ``torch_load`` is the one place a file is
unpickled; ``read_checkpoint`` reads a diffice checkpoint and checks its kind (used by the
Lightning layer and by ``nets/`` alike). ``read_state_dict`` accepts a plain state
dict or a checkpoint holding one under ``state_dict`` and strips wrapper prefixes (``module.``
from DataParallel, ``backbone.``/``encoder.`` from self-supervised or segmentation code);
``load_matching`` loads what matches and refuses a file of which nothing does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffice.errors import UserError


def torch_load(path: Path, missing: str, what: str) -> Any:
    """``torch.load`` of ``path`` on the CPU; ``missing`` is the error line for an absent file,
    an unreadable one is "{path}: not a readable {what} (Error)"."""
    if not path.is_file():
        raise UserError(missing)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input
        raise UserError(f"{path}: not a readable {what} ({type(err).__name__})") from err


def read_checkpoint(path: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """Load a checkpoint file's dict, checking that it is a diffice checkpoint of ``kind``."""
    path = Path(path)
    ckpt = torch_load(path, f"{path}: checkpoint not found" + (f" (train the {kind} first)" if kind else ""),
                      "checkpoint")
    meta = ckpt.get("diffice") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or "kind" not in meta:
        raise UserError(f"{path}: not a diffice checkpoint (no 'diffice' metadata)")
    if kind is not None and meta["kind"] != kind:
        raise UserError(f"{path}: is a {meta['kind']} checkpoint, expected a {kind} checkpoint")
    return ckpt


def read_state_dict(path: str | os.PathLike, key: str, prefixes: Sequence[str] = ("module.", "backbone."),
                    hint: str = "") -> dict[str, torch.Tensor]:
    """The tensors of weight file ``path`` (named by config ``key`` in errors), prefixes stripped."""
    path = Path(path)
    state = torch_load(path, f"{key}: weights file {path} not found{hint}", "PyTorch weights file")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path}: holds a {type(state).__name__}, not a state dict ({key})")
    clean = {}
    for k, v in state.items():
        k = str(k)
        for p in prefixes:
            k = k.removeprefix(p)
        clean[k] = v
    return clean


def load_matching(net: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike, what: str) -> None:
    """``net.load_state_dict(state, strict=False)``; a file matching none of ``net``'s tensors
    (the wrong architecture) is refused, naming ``path`` and ``what`` it should have been."""
    own = net.state_dict()
    if not any(k in own for k in state):
        raise UserError(f"{path}: no tensor matches {what} (wrong architecture?)")
    try:
        net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        first = str(err).strip().splitlines()[-1].strip()
        raise UserError(f"{path}: tensors do not fit {what}: {first}") from err
