"""Picture tables that survive offline logging (see :mod:`diffice.tracking`)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from diffice.tracking.runs import is_offline, slug, staged_in_run


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
