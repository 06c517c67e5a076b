"""W&B helpers every layer may call: runs, picture tables that survive offline, artifacts with
lineage, and a reader of an offline run's own files.

Offline is diffice's default (``wandb.mode``). Two W&B behaviours shape this module:

* An offline run writes a ``wandb.Table`` logged with ``run.log`` as JSON whose picture cells
  hold the word ``"Image"`` and no image file (wandb/wandb#4611). A table added to an
  **Artifact** keeps its pictures: the artifact's manifest names ``media/images/<hash>.png``
  entries and the table's cells reference them. :func:`log_picture_table` logs that form, and
  also each picture column as an image list in the run's history (``files/media/images``).
* ``run.use_artifact`` refuses offline runs. Offline, :func:`use_artifact` logs the artifact
  with ``use_after_commit`` (what ``use_artifact`` does online with a draft artifact): the
  transaction log records it as used by the run, and ``wandb sync`` replays it.

Artifact files are staged (copied) by W&B under ``$WANDB_DATA_DIR/artifacts/staging``, by
default in the home folder. :func:`staged_in_run` points staging at the run's own folder
(``<offline-run-…>/artifacts/staging``), so a run folder holds every file its artifacts need
until it is synced. Checkpoints are never copied: model artifacts are *reference* artifacts
(``file://`` with the file's MD5 digest).

Nothing here imports ``wandb`` unless a run is being made (``wandb.mode=disabled`` imports and
writes nothing), and nothing contacts the network unless the mode is ``online``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import struct
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from diffice.errors import UserError

MODEL_KINDS = ("ddpm", "segmenter", "classifier", "oracle")


# ----------------------------------------------------------------------------- runs


def wandb_mode(cfg) -> str:
    """``WANDB_MODE`` if set, else ``cfg.wandb.mode`` (offline when there is no config); W&B's old
    names ``dryrun`` and ``run`` read as offline and online."""
    mode = os.environ.get("WANDB_MODE") or (str(cfg.wandb.mode) if cfg is not None else "offline")
    return {"dryrun": "offline", "run": "online"}.get(mode, mode)


def wandb_group(cfg) -> str | None:
    """The run group: ``cfg.wandb.group``, else ``WANDB_RUN_GROUP``, else None (no group)."""
    group = None
    with contextlib.suppress(AttributeError, KeyError):
        group = cfg.wandb.group
    return str(group) if group else (os.environ.get("WANDB_RUN_GROUP") or None)


def init_run(cfg, *, name: str, job_type: str, dir: str | os.PathLike):
    """``wandb.init`` from the config (mode, project, entity, group), or None when disabled.

    The run's files go to ``{dir}/wandb/offline-run-…`` (offline) or ``{dir}/wandb/run-…``.
    """
    mode = wandb_mode(cfg)
    if mode == "disabled":
        return None
    if mode not in ("offline", "online"):
        raise UserError(f"wandb.mode: '{mode}' is not one of offline, online, disabled")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    from diffice.config import to_dict

    Path(dir).mkdir(parents=True, exist_ok=True)
    return wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity, dir=str(dir), mode=mode, name=name,
                      job_type=job_type, group=wandb_group(cfg), config=to_dict(cfg), reinit="finish_previous")


def run_folder(run) -> Path:
    """The run's local folder (``…/wandb/offline-run-<time>-<id>``): the parent of ``run.dir``."""
    return Path(run.dir).parent


def is_offline(run) -> bool:
    return bool(getattr(run, "offline", False) or getattr(getattr(run, "settings", None), "_offline", False))


@contextlib.contextmanager
def staged_in_run(run) -> Iterator[Path]:
    """Stage the artifact files added inside this block in the run's folder
    (``<run folder>/artifacts/staging``) instead of ``$WANDB_DATA_DIR`` (home by default)."""
    folder = run_folder(run)
    before = os.environ.get("WANDB_DATA_DIR")
    os.environ["WANDB_DATA_DIR"] = str(folder)
    (folder / "artifacts" / "staging").mkdir(parents=True, exist_ok=True)
    try:
        yield folder / "artifacts" / "staging"
    finally:
        if before is None:
            os.environ.pop("WANDB_DATA_DIR", None)
        else:
            os.environ["WANDB_DATA_DIR"] = before


def slug(text: str) -> str:
    """An artifact-safe name: letters, digits, ``-``, ``_`` and ``.``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


# ----------------------------------------------------------------------------- pictures


def _is_picture(value) -> bool:
    if isinstance(value, bytes | bytearray):
        return True
    cls = type(value)
    if cls.__module__.startswith("PIL.") or cls.__name__ == "Image" and cls.__module__.startswith("wandb"):
        return True
    shape = getattr(value, "shape", None)
    return shape is not None and len(shape) in (2, 3) and str(getattr(value, "dtype", "")) == "uint8"


def to_wandb_image(value, caption: str | None = None):
    """A ``wandb.Image`` from PNG bytes, a PIL image, an HxW / HxWx3 uint8 array or a wandb.Image."""
    import wandb

    if isinstance(value, wandb.Image):
        return value
    if isinstance(value, bytes | bytearray):
        from PIL import Image

        value = Image.open(io.BytesIO(bytes(value)))
        value.load()
    return wandb.Image(value, caption=caption)


def log_picture_table(run, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
                      label_column: str | None = None, history_images: int = 32) -> dict:
    """Log a table whose cells may be pictures so that the pictures survive offline logging.

    ``rows``: lists of cells; a picture cell is PNG ``bytes``, a PIL image, an HxW or HxWx3
    uint8 array or a ``wandb.Image`` (``None`` for a missing picture). Logs

    * an artifact ``<key>-<run id>`` of type ``table`` holding the whole table with its
      pictures (``<last part of key>.table.json`` + ``media/images/*.png``), staged in the run
      folder;
    * ``<key>/<column>``: each picture column's first ``history_images`` pictures as an image
      list in the run's history (captions from ``label_column``, default the first column);
    * ``<key>``: the table without its picture columns (offline; online, with them, as W&B
      logs tables online).

    Returns ``dict(artifact=name, picture_columns=[...], rows=n)``.
    """
    import wandb

    columns = list(columns)
    rows = [list(r) for r in rows]
    pictures = [c for i, c in enumerate(columns) if any(r[i] is not None for r in rows)
                and all(r[i] is None or _is_picture(r[i]) for r in rows)]
    pic_idx = [columns.index(c) for c in pictures]
    label_i = columns.index(label_column) if label_column else 0
    caption = [str(r[label_i]) for r in rows]
    cells = [[to_wandb_image(v, caption[j]) if i in pic_idx and v is not None else v for i, v in enumerate(r)]
             for j, r in enumerate(rows)]
    name = slug(f"{key}-{run.id}")
    art = wandb.Artifact(name, type="table", metadata={"key": key, "rows": len(rows), "picture_columns": pictures})
    with staged_in_run(run):
        art.add(wandb.Table(columns=columns, data=cells, allow_mixed_types=True), key.rsplit("/", 1)[-1])
        run.log_artifact(art)
    history: dict[str, Any] = {}
    for c, i in zip(pictures, pic_idx, strict=True):
        imgs = [to_wandb_image(r[i], caption[j]) for j, r in enumerate(rows[:history_images]) if r[i] is not None]
        if imgs:
            history[f"{key}/{c}"] = imgs
    if is_offline(run):
        keep = [i for i in range(len(columns)) if i not in pic_idx]
        history[key] = wandb.Table(columns=[columns[i] for i in keep], data=[[r[i] for i in keep] for r in rows],
                                   allow_mixed_types=True)
    else:  # fresh images: those in ``cells`` belong to the artifact now
        fresh = [[to_wandb_image(v, caption[j]) if i in pic_idx and v is not None else v for i, v in enumerate(r)]
                 for j, r in enumerate(rows)]
        history[key] = wandb.Table(columns=columns, data=fresh, allow_mixed_types=True)
    run.log(history)
    return {"artifact": name, "picture_columns": pictures, "rows": len(rows)}


# ----------------------------------------------------------------------------- artifacts


def config_digest(config: dict | None) -> str | None:
    """A short SHA-256 of a config dict (its ``wandb`` section left out: logging is not the model)."""
    if not isinstance(config, dict):
        return None
    body = {k: v for k, v in config.items() if k != "wandb"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_facts(path: str | os.PathLike) -> dict:
    """kind, steps, config digest (and pack source) of a diffice checkpoint, read safely."""
    from diffice.nets.weights import torch_load

    ckpt = torch_load(Path(path), f"{path}: checkpoint not found", "checkpoint")
    meta = ckpt.get("diffice") if isinstance(ckpt, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    pack = meta.get("pack") if isinstance(meta.get("pack"), dict) else {}
    steps = pack.get("trained_steps", ckpt.get("global_step") if isinstance(ckpt, dict) else None)
    facts = {"kind": meta.get("kind"), "steps": int(steps) if steps is not None else None,
             "config_digest": config_digest(meta.get("config")), "version": meta.get("version")}
    if pack:
        facts["pack"] = True
    return facts


def model_artifact(path: str | os.PathLike, kind: str | None = None, metadata: dict | None = None):
    """A ``model`` reference artifact named by ``kind`` (read from the file when None) that
    points at the checkpoint (``file://``, its MD5 as digest): nothing is copied or uploaded.

    Two runs that build it from the same file build the same artifact (same name and digest)."""
    import wandb

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    meta = dict(metadata) if metadata is not None else checkpoint_facts(path)
    kind = kind or meta.get("kind")
    if not kind:
        raise UserError(f"{path}: not a diffice checkpoint (no kind); pass the kind")
    meta.setdefault("kind", kind)
    meta["file"] = str(path.resolve())
    art = wandb.Artifact(slug(kind), type="model", metadata=meta)
    art.add_reference(path.resolve().as_uri(), name=path.name, checksum=True)
    return art


def log_model_artifact(run, path: str | os.PathLike, kind: str, metadata: dict | None = None,
                       aliases: Sequence[str] = ()):
    """Log a trained checkpoint as the ``model`` artifact ``kind`` (a reference, not a copy)."""
    art = model_artifact(path, kind, metadata)
    run.log_artifact(art, aliases=["latest", *aliases])
    return art


def use_artifact(run, art):
    """Declare that ``run`` used the (draft) artifact ``art``.

    Online: ``run.use_artifact(art)`` (logs the draft, then marks it used). Offline, where W&B
    refuses ``use_artifact``, the same is recorded in the run's transaction log: the artifact
    is logged with ``use_after_commit`` (the flag ``use_artifact`` sets online), so that the
    synced run lists it as an input; its name and digest equal those of the producing run's.
    """
    if not is_offline(run):
        return run.use_artifact(art)
    log = getattr(run, "_log_artifact", None)
    if log is not None:
        try:
            return log(art, use_after_commit=True)
        except TypeError:  # a wandb without the flag: the same name and digest still links the two runs
            pass
    return run.log_artifact(art)


def use_checkpoint(run, path: str | os.PathLike, kind: str | None = None):
    """Declare that ``run`` used the checkpoint at ``path`` (the ``model`` artifact ``kind``)."""
    return use_artifact(run, model_artifact(path, kind))


def dataset_description(cfg) -> dict:
    """What identifies the data set: the ``data`` section without its loading knobs."""
    from diffice.config import to_dict

    data = dict(to_dict(cfg)["data"])
    for key in ("batch_size", "num_workers", "augment"):
        data.pop(key, None)
    return data


def dataset_artifact(cfg):
    """The ``dataset`` artifact ``data-<source>``: ``dataset.json`` (the data config, which
    determines a phantom data set) and, for a manifest source, a reference to the manifest."""
    import wandb

    desc = dataset_description(cfg)
    art = wandb.Artifact(slug(f"data-{desc.get('source', 'data')}"), type="dataset",
                         metadata={**desc, "digest": config_digest(desc)})
    with art.new_file("dataset.json", mode="w") as f:
        f.write(json.dumps(desc, sort_keys=True, indent=1, default=str))
    manifest = desc.get("manifest")
    if manifest and Path(manifest).is_file():
        art.add_reference(Path(manifest).resolve().as_uri(), name=Path(manifest).name, checksum=True)
    return art


def use_dataset(run, cfg):
    """Declare that ``run`` used the data set of ``cfg`` (artifact ``data-<source>``)."""
    with staged_in_run(run):
        return use_artifact(run, dataset_artifact(cfg))


def log_outputs_artifact(run, name: str, type: str, folder: str | os.PathLike, files: Sequence[str],
                         metadata: dict | None = None):
    """Log a run's outputs (``files``: paths relative to ``folder``; folders are walked) as a
    reference artifact of ``type`` (``counterfactuals``, ``synthesis``): the manifest names each
    file with its MD5; nothing is copied."""
    import wandb

    folder = Path(folder).resolve()
    art = wandb.Artifact(slug(name), type=slug(type), metadata=dict(metadata or {}))
    for rel in files:
        p = folder / rel
        if p.exists():
            art.add_reference(p.as_uri(), name=rel.rstrip("/"), checksum=True)
    run.log_artifact(art)
    return art


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------- reading an offline run


def _records(path: Path) -> Iterator[bytes]:
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
    for data in _records(logs[0]):
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


def cmd_wandb_check(argv: Sequence[str]) -> int:
    """``diffice wandb-check PATH ...``: what the local W&B runs under PATH hold, and whether
    every picture, table and artifact file they logged is there (exit 1 if not)."""
    import argparse

    p = argparse.ArgumentParser(prog="diffice wandb-check", description=(
        "Read the local W&B run folders (offline-run-*) under each PATH and check that every logged picture, "
        "table cell picture and artifact file exists; print counts per run. Nothing is uploaded."))
    p.add_argument("paths", nargs="+", help="a run folder, or any folder to search for them (e.g. runs/)")
    p.add_argument("--no-digests", action="store_true", help="do not recompute the MD5 of referenced files")
    ns = p.parse_args(list(argv))
    total = {"runs": 0, "images": 0, "tables": 0, "logged": 0, "used": 0}
    bad = 0
    for path in ns.paths:
        runs = offline_runs(path)
        if not runs:
            raise UserError(f"{path}: no W&B run folders (run-*.wandb) found")
        for folder in runs:
            res = check_offline_run(folder, verify_refs=not ns.no_digests)
            r = res["run"]
            print(f"{folder}: {r.get('job_type') or '-'} (group {r.get('group') or '-'}): {res['images']} pictures, "
                  f"{res['tables']} tables, artifacts logged {sorted(set(res['artifacts_logged']))}, "
                  f"used {sorted(set(res['artifacts_used']))}")
            for line in res["problems"]:
                print(f"  problem: {line}")
            bad += len(res["problems"])
            total["runs"] += 1
            total["images"] += res["images"]
            total["tables"] += res["tables"]
            total["logged"] += len(res["artifacts_logged"])
            total["used"] += len(res["artifacts_used"])
    print(f"{total['runs']} runs: {total['images']} pictures, {total['tables']} tables, {total['logged']} artifacts "
          f"logged, {total['used']} used; " + (f"{bad} problems" if bad else "every file is there"))
    return 1 if bad else 0
