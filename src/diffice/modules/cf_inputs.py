"""The input set of a counterfactual run (``cf.split`` / ``cf.label`` / ``cf.ids`` / ``cf.limit``)
and the adversarial-texture reference of the real standard planes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from diffice.errors import UserError
from diffice.metrics.texture import hf_threshold

LABELS = {"NSP": "NSP", "SP": "SP", "all": None}


def select_inputs(cfg: DictConfig, datamodule) -> tuple[Any, list[int], list[int]]:
    """The input set: ``(dataset, positions, dataset indices)`` of cf.split / cf.label / cf.ids / cf.limit."""
    c = cfg.cf
    if c.label not in LABELS:
        raise UserError(f"cf.label: '{c.label}' is not one of NSP, SP, all")
    ds = datamodule.dataset(str(c.split), label=LABELS[str(c.label)])
    every = list(range(len(ds)))
    if c.get("ids"):
        every = _positions_of_ids(ds, str(c.ids))
    n = len(every) if c.limit is None else min(len(every), int(c.limit))
    positions = every[:n]
    fast = hasattr(ds, "indices") and hasattr(ds, "labels") and n > 0  # diffice's FrameDataset
    if fast:  # no image loading; checked against the first item
        indices = [int(ds.indices[p]) for p in positions]
        labels = [int(ds.labels[p]) for p in positions]
        fast = int(ds[positions[0]]["index"]) == indices[0]
    if not fast:
        items = [ds[pos] for pos in positions]
        indices = [int(it["index"]) for it in items]
        labels = [int(it["label"]) for it in items]
    if not any(lab == 0 for lab in labels):
        raise UserError(
            f"cf.split={c.split}, cf.label={c.label}: the input set has no NSP frame "
            f"({len(positions)} frames); choose another cf.split or check the data's labels"
        )
    return ds, positions, indices


def _positions_of_ids(ds, path: str) -> list[int]:
    """Positions in ``ds`` of the frame ids listed in the text file ``path`` (one per line, ``#``
    comments), in the file's order; an id the selected frames lack is a one-line error."""
    p = Path(path)
    try:
        wanted = [w.split("#", 1)[0].strip() for w in p.read_text().splitlines()]
    except OSError as err:
        raise UserError(f"cf.ids: {p}: cannot be read ({err.strerror or err})") from err
    wanted = [w for w in wanted if w]
    if not wanted:
        raise UserError(f"cf.ids: {p}: lists no frame id")
    ids = ([str(ds.source.ids[int(i)]) for i in ds.indices] if hasattr(ds, "indices") and hasattr(ds, "source")
           else [str(ds[k]["id"]) for k in range(len(ds))])
    where = {frame_id: k for k, frame_id in enumerate(ids)}
    missing = [w for w in wanted if w not in where]
    if missing:
        raise UserError(f"cf.ids: {p}: {len(missing)} id(s) are not among cf.split / cf.label's frames (first: {missing[0]})")
    return [where[w] for w in dict.fromkeys(wanted)]


def reference_hf_threshold(datamodule, limit: int = 256) -> float:
    """The adversarial-texture threshold: 99th percentile of the high-frequency energy of up to
    ``limit`` standard planes of the training split (NaN when it has none or cannot say)."""
    try:
        ds = datamodule.dataset("train", label="SP")
    except (TypeError, AttributeError, UserError):
        return float("nan")
    n = min(len(ds), limit)
    frames = [torch.stack([ds[i]["image"].float() for i in range(s, min(n, s + 32))]) for s in range(0, n, 32)]
    return hf_threshold(frames)
