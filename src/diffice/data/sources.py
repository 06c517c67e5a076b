"""Where frames come from: manifest CSVs and the adapters that turn public layouts into records.

A :class:`Record` is one row of a manifest (DESIGN.md): an image path, and optionally a
label, patient, split, mask path, concept scores and ground-truth target path. Builders:

* :func:`read_manifest` — a manifest CSV (paths relative to the CSV's folder);
* :func:`hc18_records` — HC18's own layout (``training_set/NNN_HC.png`` +
  ``NNN_HC_Annotation.png``, a one-pixel ellipse outline that is filled into a head mask);
* :func:`fpdb_records` — FETAL_PLANES_DB (``FETAL_PLANES_DB_data.csv``, ';'-separated).

Pixel loaders return float32 in [0, 1]: RGB / palette / alpha images become grey (PIL's
ITU-R 601 luma), 16-bit images are divided by 65535, 8-bit by 255. Anything unreadable is a
:class:`UserError` naming the file.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffice.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")
LABEL_WORDS = {"sp": 1, "1": 1, "nsp": 0, "0": 0, "": -1, "-1": -1, "unknown": -1, "none": -1, "nan": -1}


@dataclass
class Record:
    """One frame of a data set (paths are absolute or relative to the working directory)."""

    image: Path
    id: str
    label: int = -1
    patient: str = ""
    split: str | None = None
    mask: Path | None = None
    mask_kind: str = "index"  # index: PNG of class indices | outline: one-pixel ellipse to fill
    concepts: dict[str, float] = field(default_factory=dict)
    target: Path | None = None
    plane: int = -1  # index into PLANES, -1 unknown
    ga: float = math.nan  # gestational age in weeks, NaN unknown
    pixel_mm: float = math.nan  # pixel spacing of the image file in mm (square pixels), NaN unknown
    hc_mm: float = math.nan  # annotated head circumference in mm, NaN unknown


PLANE_WORDS = {
    "trans-thalamic": 0, "tt": 0, "transthalamic": 0,
    "trans-ventricular": 1, "tv": 1, "transventricular": 1,
    "trans-cerebellar": 2, "trans-cerebellum": 2, "tc": 2, "transcerebellar": 2,
    "": -1, "unknown": -1, "none": -1, "nan": -1, "-1": -1,
}


def parse_plane(value, where: str) -> int:
    """A plane name (trans-thalamic | trans-ventricular | trans-cerebellar, or TT / TV / TC, or
    0 / 1 / 2) as an index into PLANES; empty = unknown (-1)."""
    key = str(value).strip().lower()
    if key in ("0", "1", "2"):
        return int(key)
    if key not in PLANE_WORDS:
        raise UserError(f"{where}: plane '{value}' is not trans-thalamic, trans-ventricular, trans-cerebellar (TT, TV, TC) or empty")
    return PLANE_WORDS[key]


def optional_number(value, where: str, message: str = "'{value}' is not a number") -> float | None:
    """A number from a CSV cell or an option; None when empty, 'nan' or 'none' (unknown); a
    UserError ``{where}: {message}`` when not a number (``message`` may name ``{value}``)."""
    s = str(value).strip()
    if s == "" or s.lower() in ("nan", "none"):
        return None
    try:
        return float(s)
    except ValueError as err:
        raise UserError(f"{where}: " + message.format(value=value)) from err


def parse_ga(value, where: str) -> float:
    """Gestational age in weeks (10 to 45), empty = unknown (NaN)."""
    x = optional_number(value, where, "gestational age '{value}' is not a number of weeks")
    if x is None:
        return math.nan
    if not 10.0 <= x <= 45.0:
        raise UserError(f"{where}: gestational age {x} weeks is outside 10 to 45")
    return x


# ----------------------------------------------------------------------------- pixels


def load_image(path: Path) -> np.ndarray:
    """Read an image file as grey float32 HxW in [0, 1] (RGB -> grey, 16-bit -> /65535)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                arr = np.asarray(im, dtype=np.float32) / 65535.0
            elif mode == "I":
                arr = np.asarray(im, dtype=np.float64)
                arr = (arr / (65535.0 if arr.max() > 255 else 255.0)).astype(np.float32)
            elif mode == "F":
                arr = np.asarray(im, dtype=np.float32)
                arr = arr / max(1.0, float(arr.max()))
            else:
                if mode != "L":
                    im = im.convert("RGB").convert("L") if mode in ("P", "PA", "RGBA", "LA", "CMYK", "YCbCr") else im.convert("L")
                arr = np.asarray(im, dtype=np.float32) / 255.0
    except FileNotFoundError as err:
        raise UserError(f"{path}: image file not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{path}: not a readable image ({str(err).splitlines()[0] if str(err) else type(err).__name__}); remove or replace the file") from err
    if arr.ndim != 2 or arr.size == 0:
        raise UserError(f"{path}: image has shape {arr.shape}, expected a 2-D grey image")
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def _read_mask_raw(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                im = im.convert("L")
            return np.asarray(im).astype(np.int64)
    except FileNotFoundError as err:
        raise UserError(f"{path}: mask file not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{path}: not a readable mask image; remove or replace the file") from err


def load_mask(path: Path, kind: str, shape: tuple[int, int], num_classes: int) -> np.ndarray:
    """Read a mask as int64 HxW class indices (-1 = unknown), checking it matches ``shape``.

    ``kind="index"``: a PNG of class indices; 255 means unknown. ``kind="outline"``: HC18's
    one-pixel ellipse outline, filled into a head mask (0 background, 1 head).
    """
    raw = _read_mask_raw(path)
    if raw.ndim == 3:
        raw = raw[..., 0]
    if raw.shape != tuple(shape):
        raise UserError(f"{path}: mask is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image is {shape[1]}x{shape[0]}; masks must match their image")
    if kind == "outline":
        from scipy import ndimage

        outline = raw > 0
        filled = ndimage.binary_fill_holes(outline)
        if filled.sum() <= outline.sum() * 1.5:  # a gap in the outline: fit the ellipse instead
            import cv2

            ys, xs = np.nonzero(outline)
            if len(xs) < 5:
                raise UserError(f"{path}: annotation holds no ellipse outline (fewer than 5 pixels)")
            ellipse = cv2.fitEllipse(np.stack([xs, ys], 1).astype(np.float32))
            canvas = outline.astype(np.uint8)
            cv2.ellipse(canvas, ellipse, 1, thickness=-1)
            filled = canvas > 0
        return filled.astype(np.int64)
    mask = raw.copy()
    mask[raw == 255] = -1
    bad = (mask >= num_classes) | (mask < -1)
    if bad.any():
        raise UserError(f"{path}: mask holds class index {int(mask[bad].max())} but data.classes has only {num_classes} classes")
    return mask


# ----------------------------------------------------------------------------- manifest


def _parse_label(value: str, where: str) -> int:
    key = str(value).strip().lower()
    if key not in LABEL_WORDS:
        raise UserError(f"{where}: label '{value}' is not SP, NSP, 1, 0 or empty")
    return LABEL_WORDS[key]


def _positive_or_nan(value: str, where: str) -> float:
    x = optional_number(value, where)
    if x is None:
        return math.nan
    if not x > 0:
        raise UserError(f"{where}: {x} is not a positive length in mm")
    return x


def _parse_float(value: str, where: str) -> float:
    x = optional_number(value, where)
    if x is None:
        return math.nan
    if not (0.0 <= x <= 1.0):
        raise UserError(f"{where}: concept score {x} is outside [0, 1]")
    return x


def read_table(path: Path) -> tuple[list[str], list[dict]]:
    """(column names, rows) of a CSV file a user wrote (a spreadsheet's BOM allowed; names stripped);
    a file that is not a readable CSV is a UserError naming it."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [(c or "").strip() for c in (reader.fieldnames or [])]
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{path}: not a readable CSV ({err})") from err
    return columns, rows


def read_manifest(csv_path: str | Path) -> list[Record]:
    """Read a manifest CSV (DESIGN.md): required ``image``; optional ``label``, ``patient``,
    ``split``, ``mask``, ``qs_*``, ``target``, ``id``, ``plane``, ``ga`` (weeks), ``pixel_mm`` (the image
    file's pixel spacing), ``hc_mm`` (annotated head circumference). Paths are relative to the CSV's folder."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        hint = ""
        if csv_path.parent.name == "hc18-faults":  # the real-data benchmark: say how to make it
            hint = ("; write it from HC18 with 'diffice hc18-faults' (make demo-hc18 does; HC18: Zenodo record "
                    "1327317, CC BY 4.0, expected in ../shared/data/hc18)")
        raise UserError(f"{csv_path}: manifest CSV not found (set data.manifest){hint}")
    base = csv_path.parent
    columns, rows = read_table(csv_path)
    if "image" not in columns:
        raise UserError(f"{csv_path}: missing required column 'image' (found: {', '.join(columns) or 'none'})")
    records = []
    for n, raw in enumerate(rows, start=2):
        row = {(k or "").strip(): (v if v is not None else "") for k, v in raw.items()}
        where = f"{csv_path}:{n}"
        img = row["image"].strip()
        if not img:
            raise UserError(f"{where}: empty 'image' value")
        split = row.get("split", "").strip().lower() or None
        if split is not None and split not in SPLITS:
            raise UserError(f"{where}: split '{split}' is not train, val or test")
        mask = row.get("mask", "").strip()
        target = row.get("target", "").strip()
        concepts = {c: _parse_float(row[c], f"{where} column {c}") for c in columns if c.startswith("qs_")}
        records.append(
            Record(
                image=base / img,
                id=row.get("id", "").strip() or Path(img).stem,
                label=_parse_label(row.get("label", ""), where),
                patient=row.get("patient", "").strip(),
                split=split,
                mask=(base / mask) if mask else None,
                concepts=concepts,
                target=(base / target) if target else None,
                plane=parse_plane(row.get("plane", ""), f"{where} column plane"),
                ga=parse_ga(row.get("ga", ""), f"{where} column ga"),
                pixel_mm=_positive_or_nan(row.get("pixel_mm", ""), f"{where} column pixel_mm"),
                hc_mm=_positive_or_nan(row.get("hc_mm", ""), f"{where} column hc_mm"),
            )
        )
    return records


# ----------------------------------------------------------------------------- HC18

_HC18_NAME = re.compile(r"^(\d+)_(\d*)HC$")


def hc18_records(root: str | Path) -> list[Record]:
    """HC18 training set: ``{root}/training_set/NNN_HC.png`` with ``NNN_HC_Annotation.png``
    (or the same files directly in ``root``). Non-image files (``desktop.ini``) are skipped.
    Patient = the leading number (``010_2HC`` is a second image of fetus 010). No labels."""
    root = Path(root)
    folder = root / "training_set" if (root / "training_set").is_dir() else root
    if not folder.is_dir():
        raise UserError(f"{root}: HC18 folder not found (set data.root to the folder holding training_set/)")
    records = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() != ".png" or p.stem.endswith("_Annotation"):
            continue
        m = _HC18_NAME.match(p.stem)
        if not m:
            continue
        ann = p.with_name(p.stem + "_Annotation.png")
        records.append(
            # HC18 frames are the plane head circumference is measured on: trans-thalamic
            Record(image=p, id=p.stem, patient=m.group(1), mask=ann if ann.is_file() else None, mask_kind="outline",
                   plane=0)
        )
    if not records:
        raise UserError(f"{folder}: no HC18 images (NNN_HC.png) found; check data.root")
    return records


# ----------------------------------------------------------------------------- FETAL_PLANES_DB

FPDB_CSV = "FETAL_PLANES_DB_data.csv"
FPDB_COLUMNS = ("Image_name", "Patient_num", "Plane", "Brain_plane", "Train")
FPDB_LABELS = {"trans-thalamic": 1, "trans-cerebellum": 0, "trans-ventricular": 0}


def fpdb_records(root: str | Path) -> list[Record]:
    """FETAL_PLANES_DB brain planes: trans-thalamic = SP, trans-cerebellum and
    trans-ventricular = NSP, other planes excluded. ``Train`` 1 -> train, 0 -> test (the
    validation split is carved from train by patient later)."""
    root = Path(root)
    csv_path = root / FPDB_CSV
    if not csv_path.is_file():
        raise UserError(f"{csv_path}: not found (set data.root to the FETAL_PLANES_DB folder)")
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, delimiter=";")
        columns = [c.strip() for c in (reader.fieldnames or [])]
        rows = list(reader)
    missing = [c for c in FPDB_COLUMNS if c not in columns]
    if missing:
        raise UserError(f"{csv_path}: missing column(s) {', '.join(missing)} (is it ';'-separated?)")
    records = []
    for n, raw in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        if row["Plane"].lower() != "fetal brain":
            continue
        label = FPDB_LABELS.get(row["Brain_plane"].lower())
        if label is None:
            continue
        train = row["Train"].strip()
        if train not in ("0", "1"):
            raise UserError(f"{csv_path}:{n}: Train is '{train}', expected 1 or 0")
        name = row["Image_name"]
        records.append(
            Record(
                image=root / "Images" / f"{name}.png",
                id=name,
                label=label,
                patient=row["Patient_num"],
                split="train" if train == "1" else "test",
                plane=PLANE_WORDS[row["Brain_plane"].lower()],
            )
        )
    return records
