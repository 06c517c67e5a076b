"""Artifacts with lineage: checkpoints as ``model`` reference artifacts, the data set as a
``dataset`` artifact, a run's outputs as references; offline, "used" is recorded in the run's
transaction log (see :mod:`diffice.tracking`)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from diffice.errors import UserError
from diffice.tracking.runs import is_offline, slug, staged_in_run


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
