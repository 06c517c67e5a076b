"""The counterfactual run folder: per-frame files, records, results.csv, the run's config check.

Layout (``{cf.out}``)::

    config.yaml
    frames/{index:06d}/input.png iter1.png .. iterL.png cf.png seg_input.png seg_cf.png
                       [target.png] record.json      <- written LAST: its presence = frame finished
    results.csv                                      <- one row per input, assembled at the end

A frame's files are written into ``frames/.{index:06d}.tmp/`` and the folder is renamed into
place once ``record.json`` is in it, so ``frames/`` only ever holds finished frames: a run
killed (or out of disk space) at any moment leaves at most a temporary folder, which the
failed write or the next run removes (:func:`remove_unfinished`), and a restarted run redoes it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from diffice.errors import UserError
from diffice.io import atomic_write_text, naming, save_png

RECORD = "record.json"

# colours (RGB) of mask classes 1..K-1 in overlays; class 0 (background) is left grey
PALETTE = np.array(
    [
        [0, 0, 0],
        [230, 159, 0],
        [86, 180, 233],
        [0, 158, 115],
        [240, 228, 66],
        [213, 94, 0],
        [204, 121, 167],
        [0, 114, 178],
    ],
    dtype=np.float32,
)


def frame_dir(out: str | Path, index: int | str, folder: str = "frames") -> Path:
    """``{out}/{folder}/{index:06d}`` (a str index is used as the name as it is: the synthesis
    layer's ``{index:06d}-{k}`` edit folders)."""
    return Path(out) / folder / (index if isinstance(index, str) else f"{int(index):06d}")


def is_finished(out: str | Path, index: int | str, folder: str = "frames") -> bool:
    return (frame_dir(out, index, folder) / RECORD).is_file()


def overlay(grey: np.ndarray, classes: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Colour overlay: ``grey`` uint8 (H, W), ``classes`` int (H, W) -> uint8 (H, W, 3)."""
    rgb = np.repeat(grey.astype(np.float32)[..., None], 3, axis=2)
    colours = PALETTE[np.clip(classes, 0, None) % len(PALETTE)]
    mask = (classes > 0)[..., None]
    rgb = np.where(mask, (1 - alpha) * rgb + alpha * colours, rgb)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _tmp_dir(d: Path) -> Path:
    return d.with_name(f".{d.name}.tmp")


def remove_unfinished(out: str | Path, folder: str = "frames") -> int:
    """Remove the temporary frame folders a killed run left in ``{out}/{folder}``; returns how many."""
    frames = Path(out) / folder
    stale = sorted(frames.glob(".*.tmp")) if frames.is_dir() else []
    for d in stale:
        shutil.rmtree(d, ignore_errors=True)
    return len(stale)


def write_frame(out: str | Path, record: dict, images: dict[str, np.ndarray], folder: str = "frames",
                name: str | None = None) -> Path:
    """Write one frame's PNGs (uint8 arrays by file name) and ``record.json`` into a temporary
    folder, then rename it into place: the frame's folder exists only when it is complete.
    The folder is ``{out}/{folder}/{index:06d}`` (or ``{out}/{folder}/{name}``)."""
    d = frame_dir(out, name if name is not None else record["index"], folder)
    tmp = _tmp_dir(d)
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for name, arr in images.items():
            save_png(tmp / name, arr)
        atomic_write_text(tmp / RECORD, json.dumps(_clean(record), indent=1, sort_keys=True))
        if d.exists():  # an unfinished folder left by an older diffice
            shutil.rmtree(d)
        try:
            os.replace(tmp, d)
        except OSError as err:
            raise naming(err, d) from err
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and err.filename is not None and Path(err.filename).parent == tmp:
            raise naming(err, d / Path(err.filename).name) from err  # name the frame's file, not the temporary one
        raise
    return d


def read_record(out: str | Path, index: int | str, folder: str = "frames") -> dict | None:
    path = frame_dir(out, index, folder) / RECORD
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def read_records(out: str | Path, indices: Iterable[int] | None = None, folder: str = "frames") -> list[dict]:
    """Records of the given dataset indices (all finished frames if None), in index order."""
    out = Path(out)
    if indices is None:
        paths = sorted(p for p in (out / folder).glob(f"*/{RECORD}") if not p.parent.name.startswith("."))
        return [json.loads(p.read_text()) for p in paths]
    recs = [read_record(out, i, folder) for i in sorted(set(int(i) for i in indices))]
    return [r for r in recs if r is not None]


def results_rows(records: Sequence[dict]) -> list[dict]:
    """Flatten records into results.csv rows (concepts and per-iteration scores as columns)."""
    max_iters = max((len(r.get("p_iters") or []) for r in records), default=0)
    rows = []
    for r in records:
        row = {
            k: r.get(k)
            for k in (
                "index", "id", "method", "lambda_c", "p_input", "p_cf", "flipped", "qs_input", "qs_cf",
                "target_l1_input", "target_l1_cf", "nfe", "seconds", "iterations",
            )
        }
        for name, v in (r.get("concepts_input") or {}).items():
            row[f"{name}_input"] = v
        for name, v in (r.get("concepts_cf") or {}).items():
            row[f"{name}_cf"] = v
        p_iters = r.get("p_iters") or []
        for k in range(max_iters):
            row[f"p_iter{k + 1}"] = p_iters[k] if k < len(p_iters) else None
        rows.append(row)
    return rows


def write_results_csv(out: str | Path, records: Sequence[dict]) -> Path:
    """``results.csv``: one row per record (per input), written atomically."""
    return write_rows_csv(Path(out) / "results.csv", results_rows(records))


def write_rows_csv(path: str | Path, rows: Sequence[dict]) -> Path:
    """A CSV of dict rows (columns in order of first appearance, None as empty), written atomically."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return atomic_write_text(path, buf.getvalue())


# ----------------------------------------------------------------------------- config check

# keys that do not change a frame's counterfactual (outputs do not depend on batch size)
_IGNORED = {"cf": {"batch_size", "limit", "ids", "out"}, "data": {"batch_size", "num_workers", "augment"}}


def method_config(cfg: dict) -> dict:
    """The part of a resolved config (as a dict) that determines the counterfactuals."""
    rel: dict[str, Any] = {"seed": cfg.get("seed")}
    for section in ("cf", "data", "features"):
        sec = dict(cfg.get(section) or {})
        for key in _IGNORED.get(section, ()):
            sec.pop(key, None)
        rel[section] = sec
    return rel


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            diff = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if diff:
                return diff
        return None
    if a != b:
        return f"{prefix.rstrip('.')}: {b!r} there, {a!r} now"
    return None


def check_run_folder(out: str | Path, cfg: dict) -> None:
    """Refuse ``out`` if it holds a run made with another method-relevant configuration."""
    path = Path(out) / "config.yaml"
    if not path.is_file():
        if (Path(out) / "frames").is_dir() and any((Path(out) / "frames").iterdir()):
            raise UserError(f"{out}: holds frames but no config.yaml; choose another cf.out or delete the folder")
        return
    try:
        stored = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: unreadable ({str(err).splitlines()[0]}); delete the run folder") from err
    diff = _first_difference(method_config(cfg), method_config(stored))
    if diff:
        raise UserError(
            f"{out}: holds a run with another configuration ({diff}); set cf.out to a new folder or delete it"
        )
