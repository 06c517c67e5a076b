"""Datasets: a source of frames (the phantom, or records from a manifest / adapter), patient-
level splits, and the split view that yields the items of the DATA contract.

Every item is a dict::

    image     float32 (1, H, W) in [-1, 1]
    mask      int64 (H, W) class indices, -1 where unknown
    label     int64 scalar: 1 SP, 0 NSP, -1 unknown
    concepts  float32 (C,) in [0, 1], NaN where unknown (C = len(cfg.data.concepts))
    target    float32 (1, H, W) in [-1, 1], the ground-truth counterfactual (zeros if absent)
    has_target, has_mask   bool
    index     int64: position in the full ("all") data set, stable across splits and batches
    id        str: file stem / phantom id
    plane     int64 scalar: 0 trans-thalamic, 1 trans-ventricular, 2 trans-cerebellar, -1 unknown
    ga        float32 scalar: gestational age in weeks, NaN unknown
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from diffice.data import phantom as ph
from diffice.data.sources import Record, load_image, load_mask
from diffice.data.transforms import apply_transform, build_transform, to_model_range
from diffice.errors import UserError

SPLIT_NAMES = ("train", "val", "test")


# ----------------------------------------------------------------------------- splits


def _split_counts(n: int, fractions: list[float]) -> tuple[int, int, int]:
    f_train, f_val, f_test = (float(f) for f in fractions)
    total = f_train + f_val + f_test
    n_val = int(round(n * f_val / total)) if total > 0 else 0
    n_test = int(round(n * f_test / total)) if total > 0 else 0
    if n >= 3:  # every split with a non-zero fraction gets at least one patient
        n_val = max(n_val, 1 if f_val > 0 else 0)
        n_test = max(n_test, 1 if f_test > 0 else 0)
    n_val = min(n_val, n)
    n_test = min(n_test, n - n_val)
    return n - n_val - n_test, n_val, n_test


def patient_splits(
    patients: list[str], labels: np.ndarray, fractions: list[float], seed: int
) -> np.ndarray:
    """Assign every row a split so that no patient is cut: patients are shuffled with
    ``seed`` and dealt out by ``fractions`` (train, val, test), separately for patients with
    and without a standard plane, so that every split gets SP frames where possible."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise UserError(f"data.split_fractions must be three non-negative numbers (train, val, test), got {list(fractions)}")
    labels = np.asarray(labels)
    uniq = sorted(set(patients))
    has_sp = {p: False for p in uniq}
    for p, y in zip(patients, labels):
        if y == 1:
            has_sp[p] = True
    rng = np.random.default_rng(seed)
    sp_group = [uniq[i] for i in rng.permutation(len(uniq)) if has_sp[uniq[i]]]
    other = [uniq[i] for i in rng.permutation(len(uniq)) if not has_sp[uniq[i]]]
    total = _split_counts(len(uniq), fractions)
    # deal the SP patients first, in proportion, then fill the remaining slots with the others
    sp_counts = list(_split_counts(len(sp_group), fractions))
    sp_counts = [min(c, t) for c, t in zip(sp_counts, total)]
    sp_counts[0] = len(sp_group) - sp_counts[1] - sp_counts[2]
    assign: dict[str, str] = {}
    k = 0
    for name, c in zip(SPLIT_NAMES, sp_counts):
        for p in sp_group[k:k + c]:
            assign[p] = name
        k += c
    rest = [max(0, t - c) for t, c in zip(total, sp_counts)]
    rest[0] = len(other) - rest[1] - rest[2]
    if rest[0] < 0:  # more SP patients in val/test than the totals allow: shrink from the end
        rest = list(_split_counts(len(other), fractions))
    k = 0
    for name, c in zip(SPLIT_NAMES, rest):
        for p in other[k:k + c]:
            assign[p] = name
        k += c
    return np.array([assign[p] for p in patients], dtype=object)


def phantom_patients(count: int, seed: int, sp_fraction: float, frames_per_patient: int) -> tuple[list[str], np.ndarray]:
    """The patient and SP label (1 = standard plane) of each of the ``count`` phantom frames of simulator
    ``seed``: what :func:`patient_splits` deals out (the data module's phantom, ``diffice phantoms``)."""
    fpp = max(1, int(frames_per_patient))
    patients = [f"p{i // fpp:05d}" for i in range(count)]
    labels = np.array([int(ph.is_sp(i, int(seed), float(sp_fraction))) for i in range(count)], dtype=np.int64)
    return patients, labels


def carve_val(patients: list[str], splits: np.ndarray, labels: np.ndarray, fractions: list[float], seed: int) -> np.ndarray:
    """Move a patient-level share ``f_val / (f_train + f_val)`` of the train rows to val."""
    splits = splits.copy()
    f_train, f_val = float(fractions[0]), float(fractions[1])
    if f_val <= 0:
        return splits
    rows = np.flatnonzero(splits == "train")
    sub = patient_splits([patients[i] for i in rows], labels[rows], [f_train, f_val, 0.0], seed)
    splits[rows] = sub
    return splits


# ----------------------------------------------------------------------------- sources


class FrameSource:
    """All frames of a data set ("all"): per-frame labels, patients, splits and raw pixels."""

    name: str = ""
    concepts: list[str]
    num_classes: int
    labels: np.ndarray  # int64 (N,)
    patients: list[str]
    splits: np.ndarray  # object (N,) of "train" | "val" | "test"
    ids: list[str]
    planes: np.ndarray | None = None  # int64 (N,): index into PLANES, -1 unknown (None: all unknown)
    ga: np.ndarray | None = None  # float32 (N,): gestational age in weeks, NaN unknown
    pixel_mm: np.ndarray | None = None  # float64 (N,): the stored frame's pixel spacing in mm, NaN unknown
    hc_mm: np.ndarray | None = None  # float64 (N,): annotated head circumference in mm, NaN unknown

    def plane_of(self, index: int) -> int:
        return -1 if self.planes is None else int(self.planes[index])

    def ga_of(self, index: int) -> float:
        return math.nan if self.ga is None else float(self.ga[index])

    def biometry_of(self, index: int) -> tuple[float, float]:
        """(pixel spacing of the stored frame in mm, annotated HC in mm); NaN where unknown."""
        px = math.nan if self.pixel_mm is None else float(self.pixel_mm[index])
        return px, (math.nan if self.hc_mm is None else float(self.hc_mm[index]))

    def __len__(self) -> int:
        return len(self.labels)

    def has_mask(self, index: int) -> bool:
        """Whether frame ``index`` has an annotation (its item's ``has_mask``)."""
        return self.load(index)["mask"] is not None

    def load(self, index: int) -> dict:
        """Raw frame: image / target float32 HxW in [0, 1] (target None if absent), mask int64
        HxW or None, concepts float32 (C,)."""
        raise NotImplementedError


class PhantomSource(FrameSource):
    """The phantom rendered on the fly at ``size``; deterministic in (phantom seed, index)."""

    def __init__(self, count: int, size: list[int], seed: int, sp_fraction: float, frames_per_patient: int,
                 concepts: list[str], classes: list[str], split_fractions: list[float], split_seed: int):
        if count <= 0:
            raise UserError(f"data.phantom.count must be positive, got {count}")
        if not 0.0 <= sp_fraction <= 1.0:
            raise UserError(f"data.phantom.sp_fraction must be in [0, 1], got {sp_fraction}")
        unknown = [c for c in concepts if c not in ph.CONCEPTS]
        if unknown:
            raise UserError(f"data.concepts: the phantom has no concept {unknown[0]} (it has {', '.join(ph.CONCEPTS)})")
        self.name = "phantom"
        self.size = [int(size[0]), int(size[1])]
        self.seed, self.sp_fraction, self.fpp = int(seed), float(sp_fraction), max(1, int(frames_per_patient))
        self.concepts = list(concepts)
        self.num_classes = len(classes)
        self.patients, self.labels = phantom_patients(count, self.seed, self.sp_fraction, self.fpp)
        self.ids = [f"phantom_s{self.seed}_{i:06d}" for i in range(count)]
        self.splits = patient_splits(self.patients, self.labels, split_fractions, split_seed)
        frames = [ph.sample_frame(i, self.seed, self.sp_fraction, self.fpp) for i in range(count)]
        self.planes = np.array([ph.plane_of(f["faults"]) for f in frames], dtype=np.int64)
        self.ga = np.array([ph.ga_weeks(self.seed, f["patient"]) for f in frames], dtype=np.float32)

    def has_mask(self, index: int) -> bool:
        return True  # the phantom renders every frame's anatomy

    def render(self, index: int) -> dict:
        return ph.render_frame(index, self.size, self.seed, self.sp_fraction, self.fpp)

    def load(self, index: int) -> dict:
        fr = self.render(index)
        mask = fr["mask"].astype(np.int64)
        if self.num_classes < len(ph.CLASSES):  # fewer classes configured: fold the rest into head
            mask[mask >= self.num_classes] = min(1, self.num_classes - 1)
        return {
            "image": fr["image"].astype(np.float32) / 255.0,
            "target": fr["target"].astype(np.float32) / 255.0,
            "mask": mask,
            "concepts": np.array([fr["concepts"][c] for c in self.concepts], dtype=np.float32),
        }


class RecordSource(FrameSource):
    """Frames listed as :class:`Record` rows (a manifest CSV or an adapter)."""

    def __init__(self, name: str, records: list[Record], concepts: list[str], classes: list[str],
                 split_fractions: list[float], split_seed: int, carve_validation: bool = False,
                 origin: str = "data set", labelled: int | None = None, labelled_seed: int = 0):
        if not records:
            raise UserError(f"{origin}: the data set is empty (no frames); check data.root / data.manifest")
        self.name = name
        self.records = records
        self.concepts = list(concepts)
        self.num_classes = len(classes)
        self.labels = np.array([r.label for r in records], dtype=np.int64)
        self.patients = [r.patient or f"row{i}" for i, r in enumerate(records)]
        self.ids = [r.id for r in records]
        self.planes = np.array([r.plane for r in records], dtype=np.int64)
        self.pixel_mm = np.array([r.pixel_mm for r in records], dtype=np.float64)
        given = np.array([r.split for r in records], dtype=object)
        missing = np.array([s is None for s in given])
        splits = given.copy()
        if missing.any():
            idx = np.flatnonzero(missing)
            splits[idx] = patient_splits([self.patients[i] for i in idx], self.labels[idx], split_fractions, split_seed)
        if carve_validation:
            splits = carve_val(self.patients, splits, self.labels, split_fractions, split_seed)
        self.splits = splits
        if labelled is not None:
            keep_labelled(records, splits, int(labelled), int(labelled_seed), origin)
        self.ga = np.array([r.ga for r in records], dtype=np.float32)  # after data.labelled, which withholds some
        self.hc_mm = np.array([r.hc_mm for r in records], dtype=np.float64)

    def has_mask(self, index: int) -> bool:
        return self.records[index].mask is not None  # without reading the frame (data.labelled removes masks)

    def load(self, index: int) -> dict:
        r = self.records[index]
        image = load_image(r.image)
        mask = load_mask(r.mask, r.mask_kind, image.shape, self.num_classes) if r.mask is not None else None
        target = None
        if r.target is not None:
            target = load_image(r.target)
            if target.shape != image.shape:
                raise UserError(f"{r.target}: target is {target.shape[1]}x{target.shape[0]} (WxH) but its image is {image.shape[1]}x{image.shape[0]}")
        concepts = np.array([r.concepts.get(c, math.nan) for c in self.concepts], dtype=np.float32)
        return {"image": image, "target": target, "mask": mask, "concepts": concepts}


def keep_labelled(records: list[Record], splits: np.ndarray, n: int, seed: int, origin: str) -> None:
    """``data.labelled``: only ``n`` annotated training images keep their annotation (mask, HC and the GA
    derived from it); every other training record loses it, in place. An annotated image is a mask file:
    frames that share one (a clean frame and its faulted twin) are labelled together. The images are a
    seeded draw (``data.labelled_seed``) in the order of their first frame; val and test keep theirs."""
    masks = list(dict.fromkeys(str(r.mask) for r, s in zip(records, splits) if s == "train" and r.mask is not None))
    if n < 1 or n > len(masks):
        raise UserError(f"data.labelled={n}: {origin} has {len(masks)} annotated training images; choose 1 to {len(masks)} (null = all)")
    order = np.random.default_rng([int(seed), 11]).permutation(len(masks))
    kept = {masks[i] for i in order[:n]}
    for r, s in zip(records, splits):
        if s == "train" and str(r.mask) not in kept:
            r.mask, r.hc_mm, r.ga = None, math.nan, math.nan


# ----------------------------------------------------------------------------- split view


class FrameDataset(Dataset):
    """The frames of one split (or "all"), optionally of one label, as contract items."""

    def __init__(self, source: FrameSource, indices: np.ndarray, size: list[int], augment: bool = False,
                 split: str = "all", label: str | None = None):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.size = [int(size[0]), int(size[1])]
        self.augment = bool(augment)
        self.split, self.label = split, label
        self._tf = build_transform(self.size, self.augment)

    @property
    def labels(self) -> np.ndarray:
        return self.source.labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"FrameDataset({self.source.name}, split={self.split}, label={self.label}, n={len(self)})"

    def __getitem__(self, i: int | tuple[int, int]) -> dict:
        """Item at position ``i``; ``(i, seed)`` (from :class:`~diffice.data.datamodule.ResumableSampler`)
        fixes the augmentation's randomness instead of drawing it from torch's global generator."""
        aug_seed = None
        if isinstance(i, tuple | list):
            i, aug_seed = int(i[0]), int(i[1])
        index = int(self.indices[i])
        raw = self.source.load(index)
        img = raw["image"]
        h, w = img.shape
        has_mask = raw["mask"] is not None
        has_target = raw["target"] is not None
        mask = raw["mask"] if has_mask else np.full((h, w), -1, dtype=np.int64)
        target = raw["target"] if has_target else np.zeros_like(img)
        seed = None
        if self.augment:
            seed = aug_seed if aug_seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        img, mask, target = apply_transform(self._tf, img, mask, target, seed)
        px, hc = self.source.biometry_of(index)
        return {
            "image": torch.from_numpy(to_model_range(img))[None],
            "mask": torch.from_numpy(mask),
            "label": torch.tensor(int(self.source.labels[index]), dtype=torch.int64),
            "concepts": torch.from_numpy(np.asarray(raw["concepts"], dtype=np.float32)),
            "target": torch.from_numpy(to_model_range(target))[None] if has_target else torch.zeros(1, *self.size),
            "has_target": torch.tensor(has_target),
            "has_mask": torch.tensor(has_mask),
            "index": torch.tensor(index, dtype=torch.int64),
            "id": self.source.ids[index],
            "plane": torch.tensor(self.source.plane_of(index), dtype=torch.int64),
            "ga": torch.tensor(self.source.ga_of(index), dtype=torch.float32),
            # pixel spacing (row, column) in mm at the model's frame size (the resize may stretch), NaN unknown
            "pixel_mm": torch.tensor([px * h / self.size[0], px * w / self.size[1]], dtype=torch.float64),
            "hc_mm": torch.tensor(hc, dtype=torch.float64),
        }


def select(source: FrameSource, split: str = "all", label: str | None = None) -> np.ndarray:
    """Indices (into the full data set) of ``split`` (train | val | test | all) and ``label``
    (SP | NSP | None)."""
    if split not in (*SPLIT_NAMES, "all"):
        raise UserError(f"split '{split}' is not train, val, test or all")
    keep = np.ones(len(source), dtype=bool)
    if split != "all":
        keep &= source.splits == split
    if label is not None:
        lab = str(label).upper()
        if lab not in ("SP", "NSP", "ALL"):
            raise UserError(f"label '{label}' is not SP, NSP or all")
        if lab != "ALL":
            keep &= source.labels == (1 if lab == "SP" else 0)
    return np.flatnonzero(keep)


def require_labels(dataset: FrameDataset, split: str | None = None, what: str = "this step") -> None:
    """Raise a :class:`UserError` unless ``dataset`` holds both SP and NSP frames.

    Call it where labels are needed (the guide, the oracle, the counterfactual selection)."""
    split = split or dataset.split
    labels = dataset.labels
    src = dataset.source.name
    if len(labels) == 0:
        raise UserError(f"data ({src}): split '{split}' is empty; {what} needs frames there (check data.split_fractions)")
    if (labels < 0).all():
        raise UserError(f"data ({src}): split '{split}' has no SP/NSP labels; {what} needs a labelled data set (a manifest 'label' column, fpdb or phantom)")
    if not (labels == 1).any():
        raise UserError(f"data ({src}): split '{split}' has no SP (standard plane) example; {what} needs both classes (check the labels or data.split_fractions / data.split_seed)")
    if not (labels == 0).any():
        raise UserError(f"data ({src}): split '{split}' has no NSP example; {what} needs both classes")


def root_path(value: str | None, source: str) -> Path:
    if not value:
        raise UserError(f"data.root is required for data.source={source}; set data.root=PATH")
    p = Path(value)
    if not p.exists():
        raise UserError(f"data.root: {p} does not exist (data.source={source})")
    return p
