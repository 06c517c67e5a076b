"""Atomic file writes (a file is either absent or complete, never half-written) and the image
helpers for what is written: ``to_uint8``, ``make_grid`` and ``overlay`` (class colours on a frame).

Every writer goes to a temporary file in the destination folder and renames it into place,
so a run killed at any moment leaves no partial output and a restarted run can trust that
any file it finds is whole.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def naming(err: OSError, path: str | os.PathLike) -> OSError:
    """``err`` as an OSError that names ``path`` (a failed write, e.g. a full disk, often names
    no file, or only a temporary one): the command line shows it as "{path}: {cause}"."""
    if err.filename is not None and Path(err.filename) == Path(path):
        return err
    named = OSError(err.errno, err.strerror or str(err), str(path))
    named.__cause__ = err
    return named


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    An OSError (a read-only or full disk) is raised naming ``path``; the temporary file is removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # names the folder that could not be made
        raise naming(err, path.parent if err.filename is None else err.filename) from err
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
        os.close(fd)
    except OSError as err:  # names the file to be written, not its temporary name
        raise naming(err, path) from err
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp_path, path)
    except OSError as err:
        raise naming(err, path) from err
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Save a 2-D uint8 (grey) or HxWx3 uint8 (RGB) array as PNG, atomically."""
    from PIL import Image

    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise TypeError(f"save_png takes uint8, got {arr.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return Path(path)


def to_uint8(x) -> np.ndarray:
    """Map an image in [-1, 1] (tensor or array, shape HxW or 1xHxW) to uint8."""
    import torch

    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(frames: Sequence[np.ndarray], ncol: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile HxW (grey) or HxWx3 (RGB) uint8 frames into one image of the same kind, row-major, with
    ``pad`` white pixels between and around them (torchvision's ``make_grid``; one frame comes back
    as it is). ``ncol`` by default makes the grid about square."""
    import torch
    from torchvision.utils import make_grid as tile

    if not frames:
        raise ValueError("make_grid needs at least one frame")
    h, w = frames[0].shape[:2]
    ncol = ncol or min(len(frames), max(1, math.ceil(math.sqrt(len(frames) * h / w))))
    t = torch.from_numpy(np.stack(frames))
    grid = tile(t[:, None] if t.dim() == 3 else t.permute(0, 3, 1, 2), nrow=ncol, padding=pad, pad_value=255)
    return grid[0].numpy() if t.dim() == 3 else np.ascontiguousarray(grid.permute(1, 2, 0).numpy())


# colours (RGB) of mask classes 1, 2, ... in overlays and layout pictures (Okabe-Ito: told apart
# with any colour vision); class 0 (background) and -1 (unknown) are not coloured
PALETTE = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (213, 94, 0), (204, 121, 167), (0, 114, 178)]


def overlay(grey: np.ndarray, classes: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Colour overlay: ``grey`` uint8 (H, W), ``classes`` int (H, W) -> uint8 (H, W, 3): class c >= 1 in
    ``PALETTE[(c - 1) % 7]`` over the grey at opacity ``alpha`` (torchvision's ``draw_segmentation_masks``)."""
    import torch
    from torchvision.utils import draw_segmentation_masks

    grey, cls = np.asarray(grey, dtype=np.uint8), torch.as_tensor(np.asarray(classes, dtype=np.int64))
    present = [int(c) for c in torch.unique(cls) if c > 0]
    if not present:
        return np.repeat(grey[..., None], 3, axis=2)
    image = torch.from_numpy(np.ascontiguousarray(grey)).repeat(3, 1, 1)
    out = draw_segmentation_masks(image, torch.stack([cls == c for c in present]), alpha=alpha,
                                  colors=[PALETTE[(c - 1) % len(PALETTE)] for c in present])
    return np.ascontiguousarray(out.permute(1, 2, 0).numpy())
