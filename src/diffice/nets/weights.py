"""Loading a user's local weight file into a network, with one clear line for every mistake.

Nothing is downloaded: a config key names the file. ``read_state_dict`` accepts a plain state
dict or a checkpoint holding one under ``state_dict`` and strips wrapper prefixes (``module.``
from DataParallel, ``backbone.``/``encoder.`` from self-supervised or segmentation code);
``load_matching`` loads what matches and refuses a file of which nothing does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from diffice.errors import UserError


def read_state_dict(path: str | os.PathLike, key: str, prefixes: Sequence[str] = ("module.", "backbone."),
                    hint: str = "") -> dict[str, torch.Tensor]:
    """The tensors of weight file ``path`` (named by config ``key`` in errors), prefixes stripped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{key}: weights file {path} not found{hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - a user file
        raise UserError(f"{path}: not a readable PyTorch weights file ({type(err).__name__})") from err
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
