"""Reading a counterfactual run folder: per-frame ``record.json`` files, PNGs, ``results.csv``.

Run folder contract (written by the engine, ``diffice counterfactuals``)::

    {run}/config.yaml
    {run}/frames/{index:06d}/input.png iter1.png .. iterL.png cf.png seg_input.png seg_cf.png
                             [target.png] record.json   (record.json last: presence = finished)

record.json keys (required): index, id, method, lambda_c, p_input, p_cf, p_iters, flipped,
concepts_input, concepts_cf, qs_input, qs_cf, target_l1_input, target_l1_cf, nfe, seconds,
iterations. Optional keys the report uses when present: ``batch_id`` and ``batch_seconds``
(the device-synchronised wall time of the whole batch the frame was in), ``peak_memory_bytes``
(peak memory of the process that made it), ``qs_iters`` and ``concepts_iters`` (oracle scores
of each iteration's output), ``seconds_iters`` (the frame's share of each iteration's time).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from diffice.errors import UserError

REQUIRED_KEYS = (
    "index", "id", "method", "lambda_c", "p_input", "p_cf", "p_iters", "flipped",
    "concepts_input", "concepts_cf", "qs_input", "qs_cf", "target_l1_input", "target_l1_cf",
    "nfe", "seconds", "iterations",
)


def guide_threshold(records: list[dict]) -> float:
    """The guide's decision threshold of a run (SP when p > it): the records' ``guide_threshold``
    (one guide per run), 0.5 for records made before it was kept."""
    for r in records:
        t = r.get("guide_threshold")
        if t is not None:
            return float(t)
    return 0.5


def frame_dir(run_dir: str | Path, index: int) -> Path:
    return Path(run_dir) / "frames" / f"{int(index):06d}"


def load_records(run_dir: str | Path) -> list[dict]:
    """All finished frames' records, sorted by dataset index; UserError if none or one is broken."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found (give the cf.out folder of a counterfactual run)")
    paths = sorted(p for p in (run_dir / "frames").glob("*/record.json") if not p.parent.name.startswith("."))
    if not paths:
        raise UserError(f"{run_dir}: no frames/*/record.json found; run 'diffice counterfactuals' first "
                        "or give the folder it wrote (cf.out)")
    records = []
    for path in paths:
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"{path}: unreadable record ({type(err).__name__}); delete this frame's folder "
                            "and rerun 'diffice counterfactuals' to redo it") from err
        missing = [k for k in REQUIRED_KEYS if k not in rec] if isinstance(rec, dict) else list(REQUIRED_KEYS)
        if missing:
            raise UserError(f"{path}: record lacks key(s) {', '.join(missing)}; it was written by another "
                            "version — rerun 'diffice counterfactuals' into a new folder")
        rec["_dir"] = path.parent
        records.append(rec)
    records.sort(key=lambda r: int(r["index"]))
    seen = set()
    for rec in records:
        if int(rec["index"]) in seen:
            raise UserError(f"{rec['_dir']}: frame index {rec['index']} appears twice in {run_dir / 'frames'}")
        seen.add(int(rec["index"]))
    return records


def num(value) -> float:
    """A record value as float; None / missing -> NaN."""
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def concept_names(records: list[dict], order=()) -> list[str]:
    """Concept names found in the records, those in ``order`` (e.g. cfg.data.concepts) first, in that order."""
    found: list[str] = []
    for rec in records:
        for key in list(rec.get("concepts_input") or {}) + list(rec.get("concepts_cf") or {}):
            if key not in found:
                found.append(key)
    order = [c for c in (order or ()) if c in found]
    return order + [c for c in found if c not in order]


def max_iterations(records: list[dict]) -> int:
    return max([len(r.get("p_iters") or []) for r in records] + [int(r.get("iterations") or 0) for r in records])


def iter_value(values: list | None, k: int) -> float:
    """Value at iteration k (1-based), carried forward past the last iteration a frame ran."""
    if not values:
        return float("nan")
    return num(values[min(k, len(values)) - 1])


# ----------------------------------------------------------------------------- results.csv


def write_results_csv(run_dir: str | Path, records: list[dict] | None = None) -> Path:
    """(Re)build ``{run}/results.csv`` with the engine's own writer, so a rebuild is byte-identical."""
    from diffice.counterfactual.outputs import write_results_csv as engine_writer

    records = load_records(run_dir) if records is None else records
    return engine_writer(run_dir, [{k: v for k, v in r.items() if k != "_dir"} for r in records])


# ----------------------------------------------------------------------------- images


def read_png(path: str | Path) -> np.ndarray:
    """A PNG as a uint8 array (HxW grey or HxWx3 RGB); UserError naming the file if unreadable."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB" if im.mode in ("RGBA", "P") else "L")
            return np.asarray(im)
    except FileNotFoundError as err:
        raise UserError(f"{path}: image missing from the run folder; delete the frame folder and rerun "
                        "'diffice counterfactuals' to redo it") from err
    except OSError as err:
        raise UserError(f"{path}: unreadable image ({type(err).__name__}); delete the frame folder and rerun") from err


def read_bytes(path: str | Path) -> bytes:
    """A run file's bytes; UserError naming the file if it is missing."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as err:
        raise UserError(f"{path}: image missing from the run folder; delete the frame folder and rerun "
                        "'diffice counterfactuals' to redo it") from err


def grey_tensor(path: str | Path):
    """A grey PNG as a float32 tensor (1,H,W) in [-1, 1]."""
    import torch

    arr = read_png(path)
    if arr.ndim == 3:
        arr = arr.mean(axis=2)
    return torch.from_numpy(arr.astype(np.float32) / 127.5 - 1.0)[None]


def iteration_png(rec: dict, k: int) -> Path:
    """The frame's output after iteration k (carried forward past its last iteration; k=L -> cf)."""
    n = int(rec.get("iterations") or 0)
    if n <= 0:
        return rec["_dir"] / "cf.png"
    path = rec["_dir"] / f"iter{min(k, n)}.png"
    return path if path.exists() or k < n else rec["_dir"] / "cf.png"


def difference_map(input_u8: np.ndarray, cf_u8: np.ndarray) -> np.ndarray:
    """RGB uint8 map of x_c - x: blue where darker, red where brighter, white unchanged (scale +-255)."""
    d = (cf_u8.astype(np.float32) - input_u8.astype(np.float32)) / 255.0
    scale = max(float(np.abs(d).max()), 1e-6)
    d = np.clip(d / scale, -1, 1)
    pos, neg = np.clip(d, 0, 1), np.clip(-d, 0, 1)
    r = 1.0 - neg
    g = 1.0 - pos - neg
    b = 1.0 - pos
    return (np.stack([r, g, b], axis=-1).clip(0, 1) * 255).round().astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array)).save(buf, format="PNG")
    return buf.getvalue()
