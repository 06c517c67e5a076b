"""``diffice manifest``: a manifest CSV (docs/data.md) from a folder of frames.

Where the labels come from (docs/your_data.md):

* class folders ``DIR/SP/`` and ``DIR/NSP/`` (the folder's name is the label, any case; the images
  directly inside, not in deeper folders); a folder of images with any other name is refused in one
  line: list such frames with ``--labels`` instead (map them to SP or NSP, or leave them out);
* ``--labels CSV`` with columns ``image`` (path relative to DIR) and ``label`` (SP, NSP, 1, 0; empty =
  unlabelled), optionally ``patient`` and concept scores ``qs_<concept>`` (copied into the manifest):
  the CSV lists the frames, so image files it does not list are left out (counted in a note);
* neither: the images directly in DIR, unlabelled (enough for the DDPM; the guide, oracle and
  counterfactuals need labels).

Masks are found by name (``MASKDIR/<image stem>.png``, PNG of class indices, 255 = unknown).
Patients come from ``--patient-pattern`` (a regular expression with one group, searched in the file
name) or, by default, each image is its own patient; the split is drawn by patient
(:func:`~diffice.data.datasets.patient_splits`) and written into the ``split`` column.

Every image and mask is decoded (the loader the data sets use) before anything is written; any
problem is a :class:`UserError` naming the file, and the CSV is written atomically at the end.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffice.data.datasets import SPLIT_NAMES, patient_splits
from diffice.data.sources import IMAGE_SUFFIXES, _parse_float, _read_mask_raw, load_image, read_table
from diffice.errors import UserError
from diffice.io import atomic_write_text

COLUMNS = ["image", "id", "label", "patient", "split", "mask"]
CLASS_FOLDERS = {"sp": "SP", "nsp": "NSP"}
FOLDER_LABEL_WORDS = {"sp": "SP", "1": "SP", "nsp": "NSP", "0": "NSP", "": ""}
LOSSY = {".jpg", ".jpeg"}
MAX_CLASS_INDEX = 63  # a mask value above this (other than 255) is a picture, not class indices
DARK = 1.0 / 16.0  # an image whose brightest pixel is below this looks black (12-bit data in 16 bits?)
KINDS = "PNG, JPEG, BMP or TIFF"


@dataclass
class Frame:
    image: Path
    label: str  # "SP" | "NSP" | "" (unlabelled)
    patient: str = ""
    mask: Path | None = None
    size: tuple[int, int] = (0, 0)  # (width, height)
    concepts: dict[str, str] = field(default_factory=dict)  # qs_<concept> -> the labels CSV's cell

    @property
    def id(self) -> str:
        return self.image.stem


@dataclass
class FolderManifest:
    """The frames of a folder, ready to be written as ``out``."""

    folder: Path
    out: Path
    frames: list[Frame]
    splits: list[str]
    notes: list[str] = field(default_factory=list)
    mask_classes: int = 0  # highest class index in the masks + 1 (0: no mask)
    concepts: list[str] = field(default_factory=list)  # qs_<concept> columns (from a labels CSV)

    def rows(self) -> list[dict[str, str]]:
        base = self.out.parent.resolve()

        def rel(p: Path) -> str:
            return Path(os.path.relpath(p.resolve(), base)).as_posix()

        return [{"image": rel(f.image), "id": f.id, "label": f.label, "patient": f.patient, "split": s,
                 "mask": rel(f.mask) if f.mask else "", **{c: f.concepts.get(c, "") for c in self.concepts}}
                for f, s in zip(self.frames, self.splits, strict=True)]

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=[*COLUMNS, *self.concepts], lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows())
        return buf.getvalue()

    def write(self) -> Path:
        return atomic_write_text(self.out, self.csv_text())

    def summary(self) -> list[str]:
        """Frames per split and class, patients, masks, sizes, then the notes."""
        n = len(self.frames)
        labels = Counter(f.label for f in self.frames)
        patients = len({f.patient for f in self.frames})
        sizes = Counter(f.size for f in self.frames)
        size_text = ", ".join(f"{w}x{h} ({c})" for (w, h), c in sizes.most_common(3))
        if len(sizes) > 3:
            size_text += f", {len(sizes) - 3} other size(s)"
        classes = f"SP {labels['SP']}, NSP {labels['NSP']}" + (f", unlabelled {labels['']}" if labels[""] else "")
        lines = [f"frames: {n} ({classes}) of {patients} patient(s); sizes (WxH): {size_text}"]
        masks = sum(f.mask is not None for f in self.frames)
        if masks:
            lines.append(f"masks: {masks} of {n} frames, class indices 0-{self.mask_classes - 1} "
                         f"(data.classes needs at least {self.mask_classes} names)")
        lines.append(f"{'split':<6} {'frames':>6} {'SP':>5} {'NSP':>5} {'unlab.':>6} {'patients':>8}")
        for s in SPLIT_NAMES:
            fr = [f for f, k in zip(self.frames, self.splits, strict=True) if k == s]
            c = Counter(f.label for f in fr)
            lines.append(f"{s:<6} {len(fr):>6} {c['SP']:>5} {c['NSP']:>5} {c['']:>6} {len({f.patient for f in fr}):>8}")
        return lines + [f"note: {t}" for t in self.notes]


# ----------------------------------------------------------------------------- finding the frames


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _images_in(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (hidden files such as macOS's ``._x.png`` skipped)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_SUFFIXES)


def _images_below(folder: Path, skip: Path | None) -> list[Path]:
    """Image files anywhere below ``folder``, outside hidden folders and ``skip``."""
    found = []
    for root, dirs, files in os.walk(folder):
        r = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (skip is None or (r / d).resolve() != skip))
        found += [r / f for f in sorted(files) if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return found


def _subfolders(folder: Path, skip: Path | None) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and _visible(d) and (skip is None or d.resolve() != skip))


def _from_class_folders(folder: Path, classes: list[Path], skip: Path | None) -> list[Frame]:
    loose = _images_in(folder)
    if loose:
        raise UserError(f"{loose[0]}: an image beside the class folders ({', '.join(d.name for d in classes)}); "
                        "move it into SP/ or NSP/, or list every frame with --labels")
    frames = []
    for d in classes:
        label = CLASS_FOLDERS.get(d.name.lower())
        if label is None:
            raise UserError(f"{d}: class folder '{d.name}' is not SP or NSP (accepted: SP, NSP, any case); "
                            "to keep or drop another class, list the frames with --labels (label SP or NSP); "
                            "a folder of masks goes to --masks")
        for sub in _subfolders(d, skip):
            if _images_below(sub, skip):
                raise UserError(f"{sub}: a folder of images inside the class folder {d.name}; put its images "
                                f"directly in {d.name}/, or list every frame with --labels")
        frames += [Frame(p, label) for p in _images_in(d)]
    present = sorted({f.label for f in frames})
    if len(present) == 1:
        raise UserError(f"{folder}: only class {present[0]} has images; the guide needs SP and NSP frames (fill "
                        f"{'NSP' if present[0] == 'SP' else 'SP'}/; for an unlabelled set, for the DDPM only, "
                        "put the images directly in the folder)")
    return frames


def _from_labels(folder: Path, labels: Path) -> tuple[list[Frame], dict[Path, str]]:
    """The frames a labels CSV lists (and the patient column's values, where given)."""
    if not labels.is_file():
        raise UserError(f"{labels}: labels CSV not found")
    columns, rows = read_table(labels)
    missing = [c for c in ("image", "label") if c not in columns]
    if missing:
        raise UserError(f"{labels}: missing column(s) {', '.join(missing)} (found: {', '.join(columns) or 'none'}); "
                        "a labels CSV has columns image,label")
    frames, patients, seen = [], {}, {}
    for n, raw in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        where = f"{labels}:{n}"
        if not row["image"]:
            raise UserError(f"{where}: empty 'image' value")
        path = folder / row["image"]
        if not path.is_file():
            raise UserError(f"{where}: image '{row['image']}' not found in {folder}")
        key = path.resolve()
        if key in seen:
            raise UserError(f"{where}: image '{row['image']}' is listed twice (also line {seen[key]})")
        seen[key] = n
        label = FOLDER_LABEL_WORDS.get(row["label"].lower())
        if label is None:
            raise UserError(f"{where}: label '{row['label']}' is not SP or NSP (accepted: SP, NSP, 1, 0, any case; "
                            "empty = unlabelled); leave a frame of another class out of the CSV or map it to one of them")
        concepts = {c: row[c] for c in columns if c.startswith("qs_")}
        for c, v in concepts.items():
            _parse_float(v, f"{where} column {c}")  # a number in [0, 1] or empty
        frames.append(Frame(path, label, concepts=concepts))
        if row.get("patient"):
            patients[path] = row["patient"]
    if not frames:
        raise UserError(f"{labels}: lists no images")
    return frames, patients


def find_frames(folder: Path, labels: Path | None, masks: Path | None) -> tuple[list[Frame], dict[Path, str], list[str]]:
    """The frames of ``folder`` (with their labels), patients from a labels CSV, and notes."""
    skip = masks.resolve() if masks is not None else None
    notes: list[str] = []
    if labels is not None:
        frames, patients = _from_labels(folder, labels)
        listed = {f.image.resolve() for f in frames}
        unlisted = [p for p in _images_below(folder, skip) if p.resolve() not in listed]
        if unlisted:
            notes.append(f"{len(unlisted)} image file(s) in {folder} are not in {labels.name} and were left out "
                         f"(first: {unlisted[0].relative_to(folder).as_posix()})")
        return frames, patients, notes
    classes = [d for d in _subfolders(folder, skip) if _images_below(d, skip)]
    if classes:
        return _from_class_folders(folder, classes, skip), {}, notes
    frames = [Frame(p, "") for p in _images_in(folder)]
    if not frames:
        raise UserError(f"{folder}: no images found ({KINDS} files, directly in the folder or in SP/ and NSP/)")
    notes.append("no labels (no SP/ and NSP/ folders, no --labels): enough to train the DDPM; the guide, the oracle "
                 "and counterfactuals need SP and NSP frames")
    return frames, {}, notes


# ----------------------------------------------------------------------------- checks and the split


def _unique_names(frames: list[Frame]) -> None:
    first: dict[str, Path] = {}
    for f in frames:
        if f.id in first:
            raise UserError(f"{f.image}: same name '{f.id}' as {first[f.id]}; frames are known by file name "
                            "(ids, masks), so rename one")
        first[f.id] = f.image


def _patients(frames: list[Frame], pattern: str | None, given: dict[Path, str]) -> None:
    """Each frame's patient: the pattern's group in its file name, the labels CSV's column, or itself."""
    rx = None
    if pattern is not None:
        try:
            rx = re.compile(pattern)
        except re.error as err:
            raise UserError(f"--patient-pattern '{pattern}': not a regular expression ({err})") from err
        if rx.groups != 1:
            raise UserError(f"--patient-pattern '{pattern}': needs exactly one group (...) around the patient id, "
                            f"it has {rx.groups}; e.g. '^(\\d+)_' for 017_2.png")
    for f in frames:
        if rx is not None:
            m = rx.search(f.image.name)
            if m is None or not m.group(1):
                raise UserError(f"{f.image}: --patient-pattern '{pattern}' does not find a patient id in the name "
                                f"'{f.image.name}'")
            f.patient = m.group(1)
        else:
            f.patient = given.get(f.image, f.id)


def _masks(frames: list[Frame], masks: Path, folder: Path) -> list[Path]:
    """Attach ``masks/<stem>.*`` to its frame; a mask whose name no image has is refused."""
    if not masks.is_dir():
        raise UserError(f"{masks}: mask folder not found")
    by_id = {f.id: f for f in frames}
    elsewhere = {p.stem for p in _images_below(folder, masks.resolve())}  # images a labels CSV left out
    found: dict[str, Path] = {}
    for p in _images_in(masks):
        if p.stem in found:
            raise UserError(f"{p}: a second mask named '{p.stem}' (also {found[p.stem].name}); keep one")
        found[p.stem] = p
        if p.stem in by_id:
            if p.suffix.lower() in LOSSY:
                raise UserError(f"{p}: a mask must be lossless (PNG): JPEG compression changes the class indices")
            by_id[p.stem].mask = p
        elif p.stem not in elsewhere:
            raise UserError(f"{p}: mask without an image (no image named '{p.stem}' in {folder}); remove it or add its image")
    return [f.mask for f in frames if f.mask is not None]


def _check_mask(f: Frame) -> int:
    """Read ``f``'s mask; returns its highest class index (-1: all unknown)."""
    raw = _read_mask_raw(f.mask)
    if raw.ndim == 3:
        raw = raw[..., 0]
    w, h = f.size
    if raw.shape != (h, w):
        raise UserError(f"{f.mask}: mask is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image {f.image.name} is {w}x{h}")
    known = raw[raw != 255]
    if (raw == 255).any() and (known.size == 0 or known.max() == 0):
        raise UserError(f"{f.mask}: holds only 0 and 255, a black-and-white picture? A mask holds class indices "
                        "(0 background, 1 head, ...) and 255 means unknown: write the structure as 1")
    top = int(known.max()) if known.size else -1
    if top > MAX_CLASS_INDEX or (known.size and known.min() < 0):
        raise UserError(f"{f.mask}: holds value {top if top > MAX_CLASS_INDEX else int(known.min())}; a mask is a PNG of "
                        f"class indices 0-{MAX_CLASS_INDEX} (255 = unknown), not a picture")
    return top


def _read_all(frames: list[Frame], progress: bool) -> int:
    """Decode every image and mask (the data sets' own loader); returns how many images look black."""
    from diffice.progress import track

    dark = 0
    for f in track(frames, f"reading {len(frames)} frames", enabled=progress):
        img = load_image(f.image)  # a UserError naming the file when unreadable
        f.size = (img.shape[1], img.shape[0])
        dark += int(img.max() < DARK)
    return dark


def build_manifest(folder: str | Path, out: str | Path | None = None, labels: str | Path | None = None,
                   masks: str | Path | None = None, patient_pattern: str | None = None,
                   fractions: tuple[float, float, float] | list[float] = (0.7, 0.1, 0.2), seed: int = 0,
                   progress: bool = False) -> FolderManifest:
    """Check ``folder`` and everything named with it; the manifest to write (nothing written yet)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    fractions = [float(x) for x in fractions]
    if len(fractions) != 3 or any(not x >= 0 for x in fractions) or sum(fractions) <= 0 or fractions[0] <= 0:
        raise UserError(f"--split-fractions: {fractions} must be three numbers >= 0 (train, val, test), train > 0")
    masks = Path(masks) if masks is not None else None
    frames, given, notes = find_frames(folder, Path(labels) if labels is not None else None, masks)
    present = sorted({f.label for f in frames} - {""})
    if len(present) == 1:
        raise UserError(f"{labels}: every labelled frame is {present[0]}; the guide needs SP and NSP frames")
    if "" in {f.label for f in frames} and present:
        notes.append(f"{sum(f.label == '' for f in frames)} frame(s) unlabelled: the DDPM trains on them, the guide "
                     "skips them")
    _unique_names(frames)
    _patients(frames, patient_pattern, given)
    with_masks = _masks(frames, masks, folder) if masks is not None else []
    dark = _read_all(frames, progress)
    if dark:
        notes.append(f"{dark} image(s) look black (brightest pixel under 1/16 of full scale): 16-bit images are "
                     "divided by 65535, so rescale 12-bit data stored in 16 bits first")
    top = max([_check_mask(f) for f in frames if f.mask is not None], default=-1)
    if masks is not None and not with_masks:
        notes.append(f"no mask in {masks} has an image's name (<image stem>.png)")
    labels_arr = np.array([{"SP": 1, "NSP": 0}.get(f.label, -1) for f in frames], dtype=np.int64)
    splits = [str(s) for s in patient_splits([f.patient for f in frames], labels_arr, fractions, int(seed))]
    concepts = list(dict.fromkeys(c for f in frames for c in f.concepts))  # in the labels CSV's order
    if not concepts and present:
        notes.append("no concept scores (qs_<concept> columns of a --labels CSV): the oracle learns its QS_O from the "
                     "labels only (data-check reports the concepts missing; docs/your_data.md)")
    result = FolderManifest(folder, Path(out) if out is not None else folder / "manifest.csv", frames, splits, notes,
                            top + 1 if with_masks else 0, concepts)
    for s, f in zip(SPLIT_NAMES, fractions, strict=True):
        have = {fr.label for fr, k in zip(frames, splits, strict=True) if k == s}
        if f > 0 and not have:
            notes.append(f"split '{s}' is empty: too few patients ({len({fr.patient for fr in frames})}) for "
                         f"--split-fractions {' '.join(f'{x:g}' for x in fractions)}")
        elif f > 0 and present and not {"SP", "NSP"} <= have:
            notes.append(f"split '{s}' has no {'SP' if 'SP' not in have else 'NSP'} frame (too few patients of that class)")
    return result
