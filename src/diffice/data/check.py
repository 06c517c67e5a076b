"""Sanity checks of a data set: counts, image sizes, label balance per split, and every
problem found (unreadable files, masks of the wrong size, patients cut by the split, splits
without a standard plane ...). Used by ``diffice data-check``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
from omegaconf import DictConfig

from diffice.data.datamodule import build_source
from diffice.data.datasets import SPLIT_NAMES, PhantomSource, RecordSource
from diffice.errors import UserError


@dataclass
class CheckReport:
    source: str
    count: int
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> frames
    splits: dict = field(default_factory=dict)  # split -> {"frames", "patients", "SP", "NSP", "unknown"}
    masks: int = 0
    targets: int = 0
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"data source: {self.source}", f"images: {self.count}"]
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in self.sizes.most_common(8))
        more = len(self.sizes) - 8
        out.append(f"image sizes (WxH): {sizes}" + (f", and {more} more sizes" if more > 0 else ""))
        out.append(f"masks: {self.masks}   targets: {self.targets}")
        out.append("split   frames  patients      SP     NSP  unknown")
        for s in SPLIT_NAMES:
            d = self.splits.get(s, {})
            out.append(f"{s:<6} {d.get('frames', 0):>7} {d.get('patients', 0):>9} {d.get('SP', 0):>7} "
                       f"{d.get('NSP', 0):>7} {d.get('unknown', 0):>8}")
        if self.problems:
            out.append(f"problems ({len(self.problems)}):")
            out += [f"  - {p}" for p in self.problems]
        else:
            out.append("problems: none")
        return out


def check_data(cfg: DictConfig, quick: bool = False, progress: bool = True) -> CheckReport:
    """Check the data named by ``cfg.data``. ``quick`` reads only image headers (sizes) instead
    of decoding every image, mask and target. A data set that cannot be listed at all raises
    :class:`UserError`; problems with single frames are collected in the report."""
    source = build_source(cfg)
    rep = CheckReport(source=source.name, count=len(source))
    labelled = bool((source.labels >= 0).any())
    for s in SPLIT_NAMES:
        sel = source.splits == s
        lab = source.labels[sel]
        rep.splits[s] = {
            "frames": int(sel.sum()),
            "patients": len({p for p, k in zip(source.patients, sel) if k}),
            "SP": int((lab == 1).sum()),
            "NSP": int((lab == 0).sum()),
            "unknown": int((lab < 0).sum()),
        }
        if sel.sum() == 0:
            rep.problems.append(f"split '{s}' is empty (data.split_fractions={list(cfg.data.split_fractions)})")
        elif labelled and (lab == 1).sum() == 0:
            rep.problems.append(f"split '{s}' has no SP (standard plane) example: the guide and the evaluation need one")
    where = defaultdict(set)
    for p, s in zip(source.patients, source.splits):
        where[p].add(s)
    cut = sorted(p for p, ss in where.items() if len(ss) > 1)
    if cut:
        rep.problems.append(f"{len(cut)} patient(s) appear in more than one split (e.g. {cut[0]}): the split column cuts patients")

    if isinstance(source, PhantomSource):
        h, w = source.size
        rep.sizes[(w, h)] = len(source)
        rep.masks = rep.targets = len(source)
        return rep
    assert isinstance(source, RecordSource)
    from diffice.progress import track

    it = track(range(len(source)), "checking frames", enabled=progress)
    for i in it:
        r = source.records[i]
        try:
            if quick:
                size = _header_size(r.image)
                rep.sizes[size] += 1
                for extra in (r.mask, r.target):
                    if extra is not None and not extra.is_file():
                        raise UserError(f"{extra}: file not found")
                rep.masks += r.mask is not None
                rep.targets += r.target is not None
            else:
                raw = source.load(i)
                hh, ww = raw["image"].shape
                rep.sizes[(ww, hh)] += 1
                rep.masks += raw["mask"] is not None
                rep.targets += raw["target"] is not None
        except UserError as err:
            rep.problems.append(str(err))
    bad = [c for c in source.concepts if all(np.isnan(r.concepts.get(c, np.nan)) for r in source.records)]
    if bad and source.name == "manifest":
        rep.problems.append(f"no values for concept(s) {', '.join(bad)} listed in data.concepts (the oracle needs qs_* columns)")
    return rep


def _header_size(path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError as err:
        raise UserError(f"{path}: image file not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{path}: not a readable image; remove or replace the file") from err
