"""The demo model pack: trained checkpoints stripped to what inference needs, in fp16.

A pack file is a diffice checkpoint like any other (``checkpoint["diffice"] = {kind, config,
version}``) without optimizer or loop state, its floating tensors stored as float16, and
``checkpoint["diffice"]["pack"] = {"source", "trained_steps"}``. For the DDPM only the EMA
weights are kept (``ema_model.*``; :func:`unpack_state` copies them into ``model.*`` on
load). ``modules.common.load_checkpoint`` reads pack files and full checkpoints alike (with
``weights_only=True``), so every command takes a pack file wherever it takes a checkpoint.

Files of a pack (``models/demo/``): ``ddpm.ckpt``, ``guide.ckpt`` (the classifier, which
carries its frozen segmenter), ``oracle.ckpt``, ``synthesis.ckpt`` (the layout-conditioned
DDPM, EMA weights) and ``PROVENANCE.json``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from diffice.errors import UserError
from diffice.nets.weights import read_checkpoint

# pack file name -> (checkpoint kind, run-folder stage that trains it)
PACK_FILES: dict[str, tuple[str, str]] = {
    "ddpm.ckpt": ("ddpm", "ddpm"),
    "guide.ckpt": ("classifier", "classifier"),
    "oracle.ckpt": ("oracle", "oracle"),
    "synthesis.ckpt": ("synthesis", "synthesis"),
}
EMA_KINDS = ("ddpm", "synthesis")  # packed as their EMA weights only


def pack_state(kind: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors a pack keeps of a module's state dict, floating ones as float16 — except a tensor
    with values beyond float16's range, kept in float32 (a batch norm's running variance after an
    input standardised to ×255, as the SonoNet release's first layer sees; a few hundred bytes)."""
    if kind in EMA_KINDS:
        state = {k: v for k, v in state.items() if not k.startswith("model.")}
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if v.is_floating_point():
            if not torch.isfinite(v).all():
                raise UserError(f"{k}: holds a NaN or infinite value; this model cannot be packed")
            half = v.to(torch.float16)
            v = half if torch.isfinite(half).all() else v.float()
        out[k] = v.contiguous().clone()
    return out


def unpack_state(kind: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A pack's state dict made whole again: the DDPM's trained weights are its EMA weights."""
    if kind in EMA_KINDS and not any(k.startswith("model.") for k in state):
        state = dict(state)
        state.update({"model." + k[len("ema_model."):]: v for k, v in state.items() if k.startswith("ema_model.")})
    return state


def write_pack_file(src: str | os.PathLike, dst: str | os.PathLike, kind: str) -> dict[str, Any]:
    """Strip checkpoint ``src`` (of ``kind``) into pack file ``dst`` atomically; returns its facts."""
    from diffice.io import atomic_write_bytes

    ckpt = read_checkpoint(src, kind)
    meta = dict(ckpt["diffice"])
    steps = int(ckpt.get("global_step", 0))
    meta["pack"] = {"source": str(src), "trained_steps": steps}
    state = pack_state(kind, ckpt["state_dict"])
    buf = io.BytesIO()
    torch.save({"diffice": meta, "state_dict": state, "global_step": steps}, buf)
    atomic_write_bytes(dst, buf.getvalue())
    params = sum(v.numel() for v in state.values() if v.is_floating_point())
    return {"file": Path(dst).name, "kind": kind, "trained_steps": steps, "parameters": params,
            "bytes": Path(dst).stat().st_size}
