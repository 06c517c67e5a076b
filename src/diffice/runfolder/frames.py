"""Per-item folders of a run (counterfactual frames, synthesis layouts and edits) and its CSVs.

An item's files are written into ``{out}/{folder}/.{name}.tmp/`` and the folder is renamed into
place once ``record.json`` is in it, so ``{out}/{folder}/`` only ever holds finished items: a run
killed (or out of disk space) at any moment leaves at most a temporary folder, which the failed
write or the next run removes (:func:`remove_unfinished`), and a restarted run redoes it.
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

from diffice.io import atomic_write_text, naming, save_png

RECORD = "record.json"


def frame_dir(out: str | Path, index: int | str, folder: str = "frames") -> Path:
    """``{out}/{folder}/{index:06d}`` (a str index is used as the name as it is: the synthesis
    layer's ``{index:06d}-{k}`` edit folders)."""
    return Path(out) / folder / (index if isinstance(index, str) else f"{int(index):06d}")


def is_finished(out: str | Path, index: int | str, folder: str = "frames") -> bool:
    return (frame_dir(out, index, folder) / RECORD).is_file()


def json_safe(value: Any) -> Any:
    """JSON-safe: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _tmp_dir(d: Path) -> Path:
    return d.with_name(f".{d.name}.tmp")


def remove_unfinished(out: str | Path, folder: str = "frames") -> int:
    """Remove the temporary item folders a killed run left in ``{out}/{folder}``; returns how many."""
    frames = Path(out) / folder
    stale = sorted(frames.glob(".*.tmp")) if frames.is_dir() else []
    for d in stale:
        shutil.rmtree(d, ignore_errors=True)
    return len(stale)


def write_frame(out: str | Path, record: dict, images: dict[str, np.ndarray], folder: str = "frames",
                name: str | None = None) -> Path:
    """Write one item's PNGs (uint8 arrays by file name) and ``record.json`` into a temporary
    folder, then rename it into place: the item's folder exists only when it is complete.
    The folder is ``{out}/{folder}/{index:06d}`` (or ``{out}/{folder}/{name}``)."""
    d = frame_dir(out, name if name is not None else record["index"], folder)
    tmp = _tmp_dir(d)
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for name, arr in images.items():
            save_png(tmp / name, arr)
        atomic_write_text(tmp / RECORD, json.dumps(json_safe(record), indent=1, sort_keys=True))
        if d.exists():  # an unfinished folder left by an older diffice
            shutil.rmtree(d)
        try:
            os.replace(tmp, d)
        except OSError as err:
            raise naming(err, d) from err
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and err.filename is not None and Path(err.filename).parent == tmp:
            raise naming(err, d / Path(err.filename).name) from err  # name the item's file, not the temporary one
        raise
    return d


def read_record(out: str | Path, index: int | str, folder: str = "frames") -> dict | None:
    path = frame_dir(out, index, folder) / RECORD
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def read_records(out: str | Path, indices: Iterable[int] | None = None, folder: str = "frames") -> list[dict]:
    """Records of the given dataset indices (all finished items if None), in index order."""
    out = Path(out)
    if indices is None:
        paths = sorted(p for p in (out / folder).glob(f"*/{RECORD}") if not p.parent.name.startswith("."))
        return [json.loads(p.read_text()) for p in paths]
    recs = [read_record(out, i, folder) for i in sorted(set(int(i) for i in indices))]
    return [r for r in recs if r is not None]


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
