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
from diffice.data.datasets import patient_splits, phantom_patients
from diffice.errors import UserError
from diffice.io import atomic_write_text, save_png

COLUMNS = ["image", "id", "label", "patient", "split", "mask", "target", *ph.CONCEPTS, "quality", "faults", "plane", "ga"]


def phantom_splits(cfg: DictConfig, count: int, seed: int) -> list[str]:
    """The split (train / val / test) of each of the ``count`` phantom frames of simulator ``seed``:
    the same patient-level split the data module's phantom source makes."""
    p = cfg.data.phantom
    patients, labels = phantom_patients(count, seed, float(p.sp_fraction), int(p.frames_per_patient))
    return list(patient_splits(patients, labels, list(cfg.data.split_fractions), int(cfg.data.split_seed)))


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
    splits = phantom_splits(cfg, count, seed)
    rows, latents = [], []
    from diffice.progress import track

    it = track(range(count), f"writing {count} phantoms to {out}", enabled=progress)
    for i in it:
        fr = ph.render_frame(i, size, seed, sp_fraction, fpp)
        rows.append(_write_frame(out, fr, f"{fr['id']}.png", f"p{i // max(1, fpp):05d}", splits[i]))
        latents.append(json.dumps({"id": fr["id"], "index": i, **_plain(fr["latents"])}))
    return _write_manifest(out, COLUMNS, rows, latents)


def _write_frame(out: Path, fr: dict, name: str, patient: str, split: str) -> dict:
    """Image, mask and target PNGs of a rendered frame; its manifest row."""
    save_png(out / "images" / name, fr["image"])
    save_png(out / "masks" / name, fr["mask"])
    save_png(out / "targets" / name, fr["target"])
    return {
        "image": f"images/{name}", "id": Path(name).stem, "label": "SP" if fr["label"] == 1 else "NSP",
        "patient": patient, "split": split, "mask": f"masks/{name}", "target": f"targets/{name}",
        **{c: f"{fr['concepts'][c]:.6f}" for c in ph.CONCEPTS}, "quality": f"{fr['quality']:.6f}",
        "faults": "+".join(fr["faults"]), "plane": ph.PLANES[fr["plane"]], "ga": f"{fr['ga']:.2f}",
    }


def _write_manifest(out: Path, columns: list[str], rows: list[dict], latents: list[str]) -> Path:
    """``latents.jsonl``, then ``manifest.csv`` (last: a folder with a manifest is complete)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "latents.jsonl", "\n".join(latents) + "\n")
    return atomic_write_text(out / "manifest.csv", buf.getvalue())


ANOMALY_COLUMNS = [*COLUMNS, "anomaly", "severity", "normal", "normal_mask"]


def write_anomalies(cfg: DictConfig, out: str | Path, count: int, seed: int, names: list[str] | None = None,
                    severity: float | None = None, progress: bool = True, split: str | None = None) -> Path:
    """An abnormal test set: ``count`` phantom frames, the anomalies ``names`` (default all) in
    turn, each on the next frame that shows what it changes, at ``severity`` (default: drawn
    uniformly over the anomaly's range). Every frame's normal twin (same patient, pose, faults
    and speckle) is written beside it (``normals/``, ``normal_masks/``); the manifest has the
    ``anomaly`` and ``severity`` columns and every row in the test split.

    ``split`` (train / val / test): only frames of that split's patients of the phantom data set
    ``seed`` makes with ``cfg.data.phantom.count`` frames (:func:`phantom_splits`) — e.g. abnormal
    frames of *training* patients — and the manifest rows say that split."""
    from diffice.data import anomalies as AN

    out = Path(out)
    if count <= 0:
        raise UserError(f"--count must be positive, got {count}")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    names = [AN.anomaly(n, severity, "--anomalies")[0].name for n in (names or list(AN.ANOMALIES))]
    size = [int(v) for v in cfg.data.image_size]
    p = cfg.data.phantom
    sp_fraction, fpp = float(p.sp_fraction), int(p.frames_per_patient)
    allowed = None
    if split is not None:
        if split not in ("train", "val", "test"):
            raise UserError(f"split must be train, val or test, got {split!r}")
        allowed = phantom_splits(cfg, int(p.count), seed)
        if split not in allowed:
            raise UserError(f"data.phantom.count={int(p.count)}: no {split} patient to draw abnormal frames from")
    rows, latents, cursor = [], [], dict.fromkeys(names, 0)
    from diffice.progress import track

    it = track(range(count), f"writing {count} abnormal phantoms to {out}", enabled=progress)
    for k in it:
        name = names[k % len(names)]
        i = cursor[name]
        while (allowed is not None and (i >= len(allowed) or allowed[i] != split)) or \
                not ph.eligible(name, ph.sample_frame(i, seed, sp_fraction, fpp)["actual"]):
            i += 1
            if allowed is not None and i >= len(allowed):
                raise UserError(f"data.phantom.count={len(allowed)}: too few {split} frames show {name} for {count} abnormal frames")
            if i > cursor[name] + 100_000:  # (never for the built-in faults' probabilities)
                raise UserError(f"--anomalies: no phantom frame shows what {name} changes (data.phantom settings)")
        cursor[name] = i + 1
        a = AN.ANOMALIES[name]
        sev = float(severity) if severity is not None else float(ph.keyed_rng(seed, 11, k).uniform(a.lo, a.hi))
        fr = ph.render_frame(i, size, seed, sp_fraction, fpp, anomaly=name, severity=sev)
        normal = ph.render_frame(i, size, seed, sp_fraction, fpp, with_target=False)
        name_png = f"{fr['id']}_{name}.png"
        save_png(out / "normals" / name_png, normal["image"])
        save_png(out / "normal_masks" / name_png, normal["mask"])
        rows.append({**_write_frame(out, fr, name_png, f"p{fr['patient']:05d}", split or "test"), "anomaly": name, "severity": f"{sev:.4g}",
                     "normal": f"normals/{name_png}", "normal_mask": f"normal_masks/{name_png}"})
        latents.append(json.dumps({"id": rows[-1]["id"], "index": i, "anomaly": name, "severity": sev, **_plain(fr["latents"])}))
    return _write_manifest(out, ANOMALY_COLUMNS, rows, latents)


def _plain(x):
    """JSON-safe copy of the latents (numpy scalars and arrays to Python)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if hasattr(x, "tolist"):
        return x.tolist()
    return x
