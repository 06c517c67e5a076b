"""Write a phantom data set to disk as a manifest: ``images/``, ``masks/``, ``targets/``,
``manifest.csv`` and ``latents.jsonl`` (``diffice phantoms``).

Every file is written atomically; ``manifest.csv`` and ``latents.jsonl`` are written last, so
a folder with a manifest is complete. The written set loads back (``data.source=manifest``
with ``data.manifest=DIR/manifest.csv``, or ``data.source=phantom data.root=DIR``) into the
same items as the on-the-fly phantom of the same size, seed and split settings.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from omegaconf import DictConfig

from diffice.data import phantom as ph
from diffice.data.datasets import patient_splits
from diffice.errors import UserError
from diffice.io import atomic_write_text, save_png

COLUMNS = ["image", "id", "label", "patient", "split", "mask", "target", *ph.CONCEPTS, "quality", "faults", "plane", "ga"]


def write_phantoms(cfg: DictConfig, out: str | Path, count: int, seed: int, progress: bool = True) -> Path:
    """Render ``count`` frames (seed ``seed``, size ``cfg.data.image_size``) into ``out``;
    returns the manifest path."""
    out = Path(out)
    if count <= 0:
        raise UserError(f"--count must be positive, got {count}")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    size = [int(v) for v in cfg.data.image_size]
    p = cfg.data.phantom
    sp_fraction, fpp = float(p.sp_fraction), int(p.frames_per_patient)
    patients = [f"p{i // max(1, fpp):05d}" for i in range(count)]
    labels = [int(ph.is_sp(i, seed, sp_fraction)) for i in range(count)]
    splits = patient_splits(patients, labels, list(cfg.data.split_fractions), int(cfg.data.split_seed))
    rows, latents = [], []
    it = range(count)
    if progress:
        from rich.progress import track

        it = track(it, description=f"writing {count} phantoms to {out}")
    for i in it:
        fr = ph.render_frame(i, size, seed, sp_fraction, fpp)
        name = f"{fr['id']}.png"
        save_png(out / "images" / name, fr["image"])
        save_png(out / "masks" / name, fr["mask"])
        save_png(out / "targets" / name, fr["target"])
        rows.append({
            "image": f"images/{name}",
            "id": fr["id"],
            "label": "SP" if fr["label"] == 1 else "NSP",
            "patient": patients[i],
            "split": splits[i],
            "mask": f"masks/{name}",
            "target": f"targets/{name}",
            **{c: f"{fr['concepts'][c]:.6f}" for c in ph.CONCEPTS},
            "quality": f"{fr['quality']:.6f}",
            "faults": "+".join(fr["faults"]),
            "plane": ph.PLANES[fr["plane"]],
            "ga": f"{fr['ga']:.2f}",
        })
        latents.append(json.dumps({"id": fr["id"], "index": i, **_plain(fr["latents"])}))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "latents.jsonl", "\n".join(latents) + "\n")
    return atomic_write_text(out / "manifest.csv", buf.getvalue())


def _plain(x):
    """JSON-safe copy of the latents (numpy scalars and arrays to Python)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if hasattr(x, "tolist"):
        return x.tolist()
    return x
