"""Reading a local (offline) W&B run from its own files: the records of its ``.wandb``
transaction log, what it logged (:func:`read_offline_run`), and whether every picture, table
and artifact file it logged is there (:func:`check_offline_run`, ``diffice wandb-check``)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diffice.errors import UserError


def transaction_records(path: Path) -> Iterator[bytes]:
    """The records of a ``.wandb`` transaction log (LevelDB log format: 32 KiB blocks, 7-byte
    record headers; FULL=1, FIRST=2, MIDDLE=3, LAST=4)."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise UserError(f"{path}: not a W&B transaction log")
    block, pos, buf = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:  # block padding
            pos += (block - pos % block) % block
            continue
        chunk = data[pos:pos + length]
        pos += length
        if kind == 1:
            yield chunk
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield buf + chunk
            buf = b""


def _items(items) -> dict:
    """Logged items as a dict; W&B writes a dict value as one item per leaf (``nested_key``)."""
    out: dict[str, Any] = {}
    for it in items:
        try:
            value = json.loads(it.value_json)
        except ValueError:
            value = it.value_json
        keys = [it.key] if it.key else list(it.nested_key)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {}) if isinstance(node.get(k, {}), dict) else node
        node[keys[-1]] = value
    return out


def offline_runs(path: str | os.PathLike) -> list[Path]:
    """The W&B run folders (holding a ``run-*.wandb`` file) at or under ``path``."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found")
    if path.is_dir() and list(path.glob("run-*.wandb")):
        return [path]
    return sorted({p.parent for p in path.rglob("run-*.wandb") if p.parent.name != "latest-run"})


def read_offline_run(folder: str | os.PathLike) -> dict:
    """What a local W&B run folder holds, from its files alone.

    Returns ``dict(folder, run=dict(id, name, group, job_type, project), config, summary,
    history=[{key: value}], artifacts=[dict(name, type, digest, used, metadata, entries=[dict(path,
    digest, ref, local_path, size)])]``; history values are the logged JSON (an image list is
    ``{"_type": "images/separated", "filenames": [...]}``, a table ``{"_type": "table-file", "path": ...}``).
    """
    from wandb.proto import wandb_internal_pb2 as pb

    folder = Path(folder)
    logs = sorted(folder.glob("run-*.wandb"))
    if not logs:
        raise UserError(f"{folder}: no run-*.wandb file; not a W&B run folder")
    out: dict[str, Any] = {"folder": str(folder), "run": {}, "config": {}, "summary": {}, "history": [], "artifacts": []}
    for data in transaction_records(logs[0]):
        rec = pb.Record()
        try:
            rec.ParseFromString(data)
        except Exception:  # noqa: BLE001 - a torn last record of a killed run
            continue
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out["run"] = {"id": r.run_id, "name": r.display_name, "group": r.run_group, "job_type": r.job_type,
                          "project": r.project}
            out["config"].update(_items(r.config.update))
        elif kind == "config":
            out["config"].update(_items(rec.config.update))
        elif kind == "history":
            out["history"].append(_items(rec.history.item))
        elif kind == "summary":
            out["summary"].update(_items(rec.summary.update))
        elif kind == "artifact":
            a = rec.artifact
            try:
                meta = json.loads(a.metadata) if a.metadata else {}
            except ValueError:
                meta = {}
            out["artifacts"].append({
                "name": a.name, "type": a.type, "digest": a.digest, "used": bool(a.use_after_commit),
                "metadata": meta,
                "entries": [{"path": e.path, "digest": e.digest, "ref": e.ref, "local_path": e.local_path,
                             "size": e.size} for e in a.manifest.contents]})
    return out


def _md5_b64(path: Path) -> str:
    import base64

    h = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return base64.b64encode(h.digest()).decode()


def _is_png(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(8) == b"\x89PNG\r\n\x1a\n"
    except OSError:
        return False


def _media(value) -> list[tuple[str, str]]:
    """(type, relative path) of the media files a history value references."""
    if not isinstance(value, dict):
        return []
    t = value.get("_type")
    if t == "images/separated":
        return [("image", f) for f in value.get("filenames", [])]
    if t in ("image-file", "table-file") and "path" in value:
        return [(t.split("-")[0], value["path"])]
    return []


def check_offline_run(folder: str | os.PathLike, verify_refs: bool = True) -> dict:
    """Check that every picture and table a local W&B run logged exists as a file in its folder.

    History pictures and tables must be under ``files/``; a table cell must not be the bare
    word ``"Image"`` (the offline loss); each artifact entry must exist (staged files at their
    ``local_path``, ``file://`` references at their path, with the manifest's MD5 when
    ``verify_refs``), and each picture cell of an artifact table must name a PNG entry of the
    same artifact. Returns ``dict(run, images, tables, artifacts_logged, artifacts_used,
    models_used=[name], problems=[...])``: ``images`` counts distinct picture files.
    """
    info = read_offline_run(folder)
    base = Path(folder) / "files"
    problems: list[str] = []
    images: set[str] = set()
    tables: set[str] = set()
    lost = ("Image", "Video", "Audio")

    def check_table(path: Path, where: str, entries: dict | None) -> None:
        try:
            tab = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            problems.append(f"{where}: table unreadable ({err})")
            return
        for r, row in enumerate(tab.get("data", [])):
            for c, cell in enumerate(row):
                col = tab.get("columns", [c])[c] if c < len(tab.get("columns", [])) else c
                if isinstance(cell, str) and cell in lost:
                    problems.append(f"{where}: row {r} column {col} holds the word '{cell}', not a picture")
                elif isinstance(cell, dict) and cell.get("_type") == "image-file":
                    if entries is None:
                        target = base / cell.get("path", "")
                        ok = _is_png(target)
                    else:
                        e = entries.get(cell.get("path"))
                        ok = e is not None and _is_png(Path(e["local_path"]))
                    if not ok:
                        problems.append(f"{where}: row {r} column {col} references a missing picture {cell.get('path')}")

    for row in info["history"]:
        for key, value in row.items():
            for kind, rel in _media(value):
                p = base / rel
                if kind == "image":
                    images.add(str(p))
                    if not _is_png(p):
                        problems.append(f"history {key}: picture {rel} missing under files/")
                else:
                    tables.add(str(p))
                    if not p.is_file():
                        problems.append(f"history {key}: table {rel} missing under files/")
                    else:
                        check_table(p, f"history {key}", None)
    logged, used, models = [], [], []
    for art in info["artifacts"]:
        (used if art["used"] else logged).append(art["name"])
        if art["type"] == "model" and art["used"]:
            models.append(art["name"])
        entries = {e["path"]: e for e in art["entries"]}
        for e in art["entries"]:
            where = f"artifact {art['name']} entry {e['path']}"
            if e["ref"]:
                if e["ref"].startswith("file://"):
                    from urllib.parse import unquote, urlparse

                    p = Path(unquote(urlparse(e["ref"]).path))
                    if not p.is_file():
                        problems.append(f"{where}: referenced file {p} missing")
                    elif verify_refs and e["digest"] != _md5_b64(p):
                        problems.append(f"{where}: {p} changed since it was logged (MD5 differs)")
                continue
            p = Path(e["local_path"])
            if not p.is_file():
                problems.append(f"{where}: staged file {p} missing")
                continue
            if e["path"].endswith(".png"):
                images.add(str(p))
                if not _is_png(p):
                    problems.append(f"{where}: not a PNG")
            if e["path"].endswith(".table.json"):
                tables.add(str(p))
                check_table(p, where, entries)
    return {"run": info["run"], "images": len(images), "tables": len(tables), "artifacts_logged": logged,
            "artifacts_used": used, "models_used": models, "problems": problems}
