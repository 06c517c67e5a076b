"""Reading weight files and checkpoints from disk, with one clear line for every mistake.

Nothing is downloaded: a config key names the file. ``torch_load`` is the one place a file is
unpickled, and it unpickles safely: ``torch.load(weights_only=True)`` builds only tensors,
numbers, strings and plain containers (plus ``argparse.Namespace``, which third-party weight
files often carry), so a crafted file cannot run code; a file that asks for anything else is
refused in one line naming it and the Python object it wanted. ``read_checkpoint`` reads a
diffice checkpoint and checks its kind and that its weights are finite (used by the
Lightning layer and by ``nets/`` alike). ``read_state_dict`` accepts a plain state
dict or a checkpoint holding one under ``state_dict`` and strips wrapper prefixes (``module.``
from DataParallel, ``backbone.``/``encoder.`` from self-supervised or segmentation code);
``load_matching`` loads what matches and refuses a file of which nothing does.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffice.errors import UserError

# the only Python classes a weight file may ask for beyond tensors, numbers, strings and containers
SAFE_GLOBALS: list = [argparse.Namespace]


def _refused_global(err: BaseException) -> str | None:
    """The ``module.name`` a weights-only unpickler refused, from torch's (multi-line) message."""
    m = re.search(r"GLOBAL ([\w.]+)", str(err))
    return m.group(1) if m else None


def torch_load(path: Path, missing: str, what: str) -> Any:
    """Safe ``torch.load`` of ``path`` on the CPU (``weights_only=True``): no code in the file runs.

    ``missing`` is the error line for an absent file; a file that would need arbitrary Python
    objects is refused as "{path}: refused: ... ({module.name})", an unreadable one is
    "{path}: not a readable {what} (Error)".
    """
    path = Path(path)
    if path.is_dir():
        hint = f" (e.g. {path / 'last.ckpt'})" if (path / "last.ckpt").is_file() else ""
        raise UserError(f"{path}: a folder, not a {what} file{hint}")
    if not path.is_file():
        raise UserError(missing)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        name = _refused_global(err)
        if name is None:
            raise UserError(f"{path}: not a readable {what} (UnpicklingError)") from err
        raise UserError(
            f"{path}: refused: it asks to build the Python object {name}, which could run code; diffice loads "
            f"only tensors and plain containers from a {what} (is it the right file, or was it tampered with?)"
        ) from err
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input
        raise UserError(f"{path}: not a readable {what} ({type(err).__name__})") from err


def check_finite(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """UserError naming ``path`` and the first floating tensor of ``state`` holding NaN or inf."""
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
            if not bool(torch.isfinite(value).all()):
                bad = "NaN" if bool(torch.isnan(value).any()) else "infinite"
                raise UserError(
                    f"{path}: tensor '{name}' holds {bad} values (a diverged or corrupt model); "
                    "use an earlier checkpoint or train again"
                )


def read_checkpoint(path: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """Load a checkpoint file's dict (safely), checking that it is a diffice checkpoint of
    ``kind`` whose weights are all finite."""
    path = Path(path)
    ckpt = torch_load(path, f"{path}: checkpoint not found" + (f" (train the {kind} first)" if kind else ""),
                      "checkpoint")
    meta = ckpt.get("diffice") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or "kind" not in meta:
        raise UserError(f"{path}: not a diffice checkpoint (no 'diffice' metadata)")
    if kind is not None and meta["kind"] != kind:
        raise UserError(f"{path}: is a {meta['kind']} checkpoint, expected a {kind} checkpoint")
    if isinstance(ckpt.get("state_dict"), Mapping):
        check_finite(path, ckpt["state_dict"])
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
    check_finite(path, clean)
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
