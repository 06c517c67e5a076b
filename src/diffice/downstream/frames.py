"""Sets of frames for the downstream study, and their two readers.

A :class:`FrameSet` is plain arrays: ``images`` uint8 (N, H, W), ``plane`` int64 (N,) (index into
``diffice.data.phantom.PLANES``: 0 trans-thalamic, 1 trans-ventricular, 2 trans-cerebellar, -1
unknown), ``anomaly`` (name per frame, '' = normal), ``origin`` ('real' | 'synthetic'), ``ids``,
``severity`` float (N,) (NaN unknown), for synthetic edits ``source`` (the uint8 frame the
edit started from, or None) and, for a segmentation study, ``masks`` (int16 (N, H, W) class
indices, -1 unknown, or None: a frame's head annotation or a synthetic sample's layout).

Readers:

* :func:`load_manifest` — a manifest CSV: ``image`` (relative to the CSV's folder), optional
  ``id``, ``split``, ``plane`` (TT / TV / TC, the full names or 0 / 1 / 2), ``anomaly`` (empty =
  normal), ``severity``, ``origin`` (default real);
* :func:`load_synthesis_run` — a synthesis run folder (``docs/architecture.md``): the samples of
  ``layouts/*/`` or the edited frames of ``edits/*/``, plane and anomaly from each ``record.json``;
  with ``mask_classes`` each sample carries its layout (``layout_classes.png``) as its mask: the
  synthetic image–mask pairs of the head-measurement study.

Every error a user can cause (a missing file, a bad column, an empty set) is a
:class:`~diffice.errors.UserError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffice.errors import UserError

ORIGINS = ("real", "synthetic")


@dataclass
class FrameSet:
    images: np.ndarray
    plane: np.ndarray
    anomaly: list[str]
    origin: list[str]
    ids: list[str]
    severity: np.ndarray | None = None
    source: np.ndarray | None = None
    masks: np.ndarray | None = None
    meta: dict = field(default_factory=dict)  # free-form: where the set was read from

    def __post_init__(self):
        self.images = np.asarray(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim != 3:
            raise ValueError(f"FrameSet.images must be uint8 (N, H, W), got {self.images.dtype} {self.images.shape}")
        n = len(self.images)
        self.plane = np.asarray(self.plane, dtype=np.int64).reshape(-1)
        self.anomaly = [str(a or "") for a in self.anomaly]
        self.origin = [str(o) for o in self.origin]
        self.ids = [str(i) for i in self.ids]
        if self.severity is None:
            self.severity = np.full(n, np.nan, dtype=np.float64)
        self.severity = np.asarray(self.severity, dtype=np.float64).reshape(-1)
        if self.source is not None:
            self.source = np.asarray(self.source)
            if self.source.shape != self.images.shape or self.source.dtype != np.uint8:
                raise ValueError("FrameSet.source must be uint8 with the images' shape")
        if self.masks is not None:
            self.masks = np.asarray(self.masks)
            if self.masks.shape != self.images.shape or not np.issubdtype(self.masks.dtype, np.integer):
                raise ValueError("FrameSet.masks must be integer class indices with the images' shape")
            self.masks = self.masks.astype(np.int16, copy=False)
        lengths = {len(self.plane), len(self.anomaly), len(self.origin), len(self.ids), len(self.severity)}
        if lengths != {n}:
            raise ValueError(f"FrameSet fields have different lengths ({n} images; {sorted(lengths)})")
        bad = sorted(set(self.origin) - set(ORIGINS))
        if bad:
            raise ValueError(f"FrameSet.origin must be real or synthetic, got {bad[0]!r}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the frames."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def abnormal(self) -> np.ndarray:
        """bool (N,): the frame has an anomaly."""
        return np.array([a != "" for a in self.anomaly], dtype=bool)

    def anomalies(self) -> list[str]:
        """The anomaly names present, sorted."""
        return sorted({a for a in self.anomaly if a})

    def subset(self, index) -> FrameSet:
        """The frames at ``index`` (int positions or a bool mask), in that order."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        return FrameSet(
            images=self.images[idx], plane=self.plane[idx], anomaly=[self.anomaly[i] for i in idx],
            origin=[self.origin[i] for i in idx], ids=[self.ids[i] for i in idx], severity=self.severity[idx],
            source=None if self.source is None else self.source[idx],
            masks=None if self.masks is None else self.masks[idx], meta=dict(self.meta),
        )

    def resized(self, size: Sequence[int]) -> FrameSet:
        """The same frames at ``size`` = (height, width) (cv2.INTER_AREA; masks nearest; itself if already that size)."""
        size = (int(size[0]), int(size[1]))
        if size == self.size:
            return self
        return FrameSet(
            images=resize_frames(self.images, size), plane=self.plane, anomaly=list(self.anomaly),
            origin=list(self.origin), ids=list(self.ids), severity=self.severity,
            source=None if self.source is None else resize_frames(self.source, size),
            masks=None if self.masks is None else resize_masks(self.masks, size), meta=dict(self.meta),
        )

    def digest(self) -> str:
        """A short hash of the frames and their labels: equal sets give equal digests."""
        h = hashlib.sha1()
        h.update(repr(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(self.plane.astype("<i8").tobytes())
        h.update("\0".join(self.anomaly).encode())
        h.update("\0".join(self.origin).encode())
        h.update("\0".join(self.ids).encode())
        if self.masks is not None:
            h.update(np.ascontiguousarray(self.masks, dtype="<i2").tobytes())
        return h.hexdigest()[:16]

    @staticmethod
    def empty(size: Sequence[int] = (0, 0)) -> FrameSet:
        return FrameSet(np.zeros((0, int(size[0]), int(size[1])), np.uint8), np.zeros(0, np.int64), [], [], [])


def concat(sets: Sequence[FrameSet]) -> FrameSet:
    """One FrameSet of ``sets`` in order (all of one frame size; ``source`` and ``masks`` kept only if all have them)."""
    sets = [s for s in sets if len(s)]
    if not sets:
        return FrameSet.empty()
    sizes = {s.size for s in sets}
    if len(sizes) > 1:
        raise ValueError(f"concat: frames of different sizes {sorted(sizes)}; resize them first")
    source = None
    if all(s.source is not None for s in sets):
        source = np.concatenate([s.source for s in sets])
    masks = None
    if all(s.masks is not None for s in sets):
        masks = np.concatenate([s.masks for s in sets])
    return FrameSet(
        images=np.concatenate([s.images for s in sets]),
        plane=np.concatenate([s.plane for s in sets]),
        anomaly=[a for s in sets for a in s.anomaly],
        origin=[o for s in sets for o in s.origin],
        ids=[i for s in sets for i in s.ids],
        severity=np.concatenate([s.severity for s in sets]),
        source=source,
        masks=masks,
    )


def resize_frames(images: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """uint8 (N, H, W) -> uint8 (N, size[0], size[1]) with cv2.INTER_AREA (shrinking without aliasing)."""
    import cv2

    h, w = int(size[0]), int(size[1])
    out = np.empty((len(images), h, w), np.uint8)
    for i, im in enumerate(images):
        out[i] = cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA)
    return out


def resize_masks(masks: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """int16 class maps (N, H, W) -> (N, size[0], size[1]) by nearest neighbour (classes stay classes)."""
    import cv2

    h, w = int(size[0]), int(size[1])
    out = np.empty((len(masks), h, w), np.int16)
    for i, m in enumerate(masks):
        out[i] = cv2.resize(np.asarray(m, np.int16), (w, h), interpolation=cv2.INTER_NEAREST)
    return out


def read_frame(path: Path, size: Sequence[int] | None) -> np.ndarray:
    """A grey uint8 frame (any image file diffice reads), at ``size`` if given."""
    from diffice.data.sources import load_image

    arr = np.clip(np.round(load_image(path) * 255.0), 0, 255).astype(np.uint8)
    if size is not None and arr.shape != (int(size[0]), int(size[1])):
        arr = resize_frames(arr[None], size)[0]
    return arr


def _stack(frames: list[np.ndarray], where: Path, paths: list[Path]) -> np.ndarray:
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        first = frames[0].shape
        odd = next(p for p, f in zip(paths, frames) if f.shape != first)
        raise UserError(f"{odd}: frame of size {frames[paths.index(odd)].shape}, the first of {where} is {first}; "
                        f"pass a size to resize them")
    return np.stack(frames)


# ----------------------------------------------------------------------------- manifest


def _parse_severity(value: str, where: str) -> float:
    from diffice.data.sources import optional_number

    x = optional_number(value, where, "severity '{value}' is not a number")
    return math.nan if x is None else x


def load_manifest(path: str | Path, split: str | None = None, size: Sequence[int] | None = None) -> FrameSet:
    """The frames of a manifest CSV (of one ``split`` if given), resized to ``size`` = (H, W).

    Columns: ``image`` (required, relative to the CSV's folder), ``id``, ``split``, ``plane``
    (as in ``diffice.data.phantom.PLANES``, TT / TV / TC or 0 / 1 / 2; empty = unknown),
    ``anomaly`` (empty = normal), ``severity`` (a number), ``origin`` (real | synthetic, default real).
    """
    from diffice.data.sources import parse_plane, read_table

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: manifest CSV not found")
    columns, rows = read_table(path)
    if "image" not in columns:
        raise UserError(f"{path}: missing required column 'image' (found: {', '.join(columns) or 'none'})")
    want = split.strip().lower() if split else None
    base = path.parent
    frames, paths = [], []
    planes, anomalies, origins, ids, severities = [], [], [], [], []
    for n, raw in enumerate(rows, start=2):
        row = {(k or "").strip(): (v if v is not None else "") for k, v in raw.items()}
        where = f"{path}:{n}"
        if want is not None and row.get("split", "").strip().lower() != want:
            continue
        img = row["image"].strip()
        if not img:
            raise UserError(f"{where}: empty 'image' value")
        origin = row.get("origin", "").strip().lower() or "real"
        if origin not in ORIGINS:
            raise UserError(f"{where}: origin '{origin}' is not real or synthetic")
        planes.append(parse_plane(row.get("plane", ""), f"{where} column plane"))
        anomalies.append(row.get("anomaly", "").strip())
        severities.append(_parse_severity(row.get("severity", ""), f"{where} column severity"))
        origins.append(origin)
        ids.append(row.get("id", "").strip() or Path(img).stem)
        paths.append(base / img)
        frames.append(read_frame(base / img, size))
    if not frames:
        raise UserError(f"{path}: no frames" + (f" of split '{split}'" if want else "")
                        + (f" (splits there: {', '.join(sorted({r.get('split', '').strip() or '(empty)' for r in rows}))})"
                           if want and rows else ""))
    return FrameSet(_stack(frames, path, paths), np.array(planes), anomalies, origins, ids,
                    severity=np.array(severities), meta={"path": str(path), "split": split})


# ----------------------------------------------------------------------------- synthesis run folder

KINDS = ("layouts", "edits")
LAYOUT_CLASSES = "layout_classes.png"  # a layout folder's class-index PNG (255 = unspecified)
_SAMPLE = re.compile(r"^sample_(\d+)\.png$")


def _record(folder: Path) -> dict | None:
    path = folder / "record.json"
    if not path.is_file():
        return None  # an unfinished folder (finished ones are renamed into place with their record)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable record ({err}); delete the folder and rerun the synthesis") from err
    if not isinstance(rec, dict):
        raise UserError(f"{path}: a record must be a JSON object")
    return rec


def _plane(rec: dict, path: Path) -> int:
    value = rec.get("plane", -1)
    if value is None:
        return -1
    try:
        plane = int(value)
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: plane {value!r} is not 0, 1, 2 or -1") from err
    if plane not in (-1, 0, 1, 2):
        raise UserError(f"{path}: plane {plane} is not 0, 1, 2 or -1")
    return plane


def _severity(rec: dict, path: Path) -> float:
    value = rec.get("severity")
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: severity {value!r} is not a number") from err


def _need(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"{path}: image file not found (the record says it is there); rerun the synthesis")
    return path


def load_synthesis_run(run_dir: str | Path, kind: str, size: Sequence[int] | None = None, *,
                       mask_classes: int | None = None) -> FrameSet:
    """The synthetic frames of a synthesis run folder, resized to ``size`` = (H, W) if given.

    ``kind`` 'layouts': every ``layouts/*/sample_*.png`` (as many as the record's ``samples``),
    plane from the folder's ``record.json``, anomaly from its ``anomaly`` field ('' when absent);
    ``severity`` from its ``severity`` field (NaN when absent), for both kinds.
    ``kind`` 'edits': every ``edits/*/edited.png``, plane from ``record.json``, anomaly from its
    ``anomaly`` field, or when that is absent its ``edit`` (every edit is then abnormal); the
    unedited ``source.png`` is kept in ``FrameSet.source`` for pairing. Folders without a
    ``record.json`` are unfinished and skipped.
    ``mask_classes`` (layouts only): the number of classes; every sample then carries its folder's
    ``layout_classes.png`` (class indices, 255 = unspecified -> -1) as its mask, resized with it.
    """
    from diffice.data.sources import load_mask

    run_dir = Path(run_dir)
    if kind not in KINDS:
        raise UserError(f"{run_dir}: kind '{kind}' is not one of {', '.join(KINDS)}")
    root = run_dir / kind
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: synthesis run folder not found")
    if not root.is_dir():
        raise UserError(f"{root}: not found; the synthesis run has no {kind}")
    if mask_classes is not None and kind != "layouts":
        raise ValueError("load_synthesis_run: masks come with layouts only")
    frames, sources, paths, masks = [], [], [], []
    planes, anomalies, ids, severities = [], [], [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        rec = _record(folder)
        if rec is None:
            continue
        rec_path = folder / "record.json"
        plane = _plane(rec, rec_path)
        severity = _severity(rec, rec_path)
        if kind == "layouts":
            anomaly = str(rec.get("anomaly") or "")
            if isinstance(rec.get("samples"), list):
                files = [_need(folder / f"sample_{j}.png") for j in range(len(rec["samples"]))]
            else:
                files = sorted((p for p in folder.iterdir() if _SAMPLE.match(p.name)),
                               key=lambda p: int(_SAMPLE.match(p.name).group(1)))
            layout = None
            for f in files:
                if mask_classes is None:
                    frames.append(read_frame(f, size))
                else:  # the sample and the layout it was drawn from, read at the sample's size, resized together
                    frame = read_frame(f, None)
                    if layout is None:
                        layout = load_mask(_need(folder / LAYOUT_CLASSES), "index", frame.shape, int(mask_classes))
                    pair = FrameSet(frame[None], [plane], [anomaly], ["synthetic"], [f.stem], masks=layout[None])
                    pair = pair if size is None else pair.resized(size)
                    frames.append(pair.images[0])
                    masks.append(pair.masks[0])
                paths.append(f)
                planes.append(plane)
                severities.append(severity)
                anomalies.append(anomaly)
                ids.append(f"{kind}/{folder.name}/{f.stem}")
        else:
            anomaly = rec["anomaly"] if "anomaly" in rec else rec.get("edit")
            f = _need(folder / "edited.png")
            frames.append(read_frame(f, size))
            sources.append(read_frame(_need(folder / "source.png"), size))
            paths.append(f)
            planes.append(plane)
            severities.append(severity)
            anomalies.append(str(anomaly or ""))
            ids.append(f"{kind}/{folder.name}")
    if not frames:
        raise UserError(f"{root}: no finished {kind} frames (no folder with a record.json and its images)")
    images = _stack(frames, root, paths)
    source = _stack(sources, root, paths) if sources else None
    return FrameSet(images, np.array(planes), anomalies, ["synthetic"] * len(frames), ids,
                    severity=np.array(severities), source=source, masks=np.stack(masks) if masks else None,
                    meta={"path": str(run_dir), "kind": kind})
