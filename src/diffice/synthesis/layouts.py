"""Layouts: what a synthesis is asked to draw, read from PNG files, and the edit operators.

A layout is an int64 (H, W) map of the data config's mask classes (``data.classes``, the
value is the class index, as in the data set's mask PNGs); 255 in a PNG (-1 here) leaves a
pixel *unspecified* (the model fills it in). A layout must match the model's frame size
exactly and name at least one structure (a class other than the first, background).

Edit operators (``synthesis.edits``; issue 14 adds the anomaly operators beside them) turn a
frame's layout into an edited one, written ``op:class[:amount]``:

===================  ======================================================================
``remove:C``         class C's pixels become the class that surrounds them most
``grow:C:N``         class C grows by N pixels into its neighbours (not into background)
``shrink:C:N``       class C shrinks by N pixels (the surrounding class fills in)
``shift:C:DY,DX``    class C moves by (DY, DX) pixels inside the head
``scale:C:F``        class C, with everything it encloses, scaled by F (0.5-2) about its centre:
                     a head's circumference times F (``scale:head:1.15``: a 15 % larger head)
``anomaly:NAME[:S]`` the anomaly NAME at severity S (default its default): absent_csp,
                     banana_cerebellum, enlarged_cm, microcephaly, lemon
                     (:mod:`diffice.data.anomalies` says what each imitates and measures)
===================  ======================================================================
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from diffice.data import anomalies as AN
from diffice.errors import UserError
from diffice.io import overlay, to_uint8

UNSPECIFIED = 255


def read_layout(path: str | Path, classes: list[str], size: tuple[int, int] | list[int]) -> np.ndarray:
    """A layout PNG as int64 (H, W) class indices (-1 unspecified); UserError naming ``path``
    for a wrong size, an unknown class value or an empty layout."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                raise UserError(f"{path}: a layout is a grey PNG of class indices (mode L or P), this one is {im.mode}")
            arr = np.asarray(im).astype(np.int64)
    except FileNotFoundError as err:
        raise UserError(f"{path}: layout file not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{path}: not a readable layout PNG") from err
    h, w = int(size[0]), int(size[1])
    if arr.shape != (h, w):
        raise UserError(f"{path}: layout is {arr.shape[1]}x{arr.shape[0]} (WxH) but the model makes {w}x{h} frames (data.image_size={[h, w]})")
    arr[arr == UNSPECIFIED] = -1
    bad = (arr >= len(classes)) | (arr < -1)
    if bad.any():
        raise UserError(f"{path}: layout holds class value {int(arr[bad].max())}, but the model knows {len(classes)} classes "
                        f"(0..{len(classes) - 1}: {', '.join(classes)}; 255 = unspecified)")
    check_not_empty(arr, str(path), classes)
    return arr


def check_not_empty(layout: np.ndarray, where: str, classes: list[str]) -> None:
    if not (layout >= 1).any():
        raise UserError(f"{where}: the layout is empty (no pixel of {', '.join(classes[1:])}); draw at least one structure")


def class_index(name: str, classes: list[str], where: str) -> int:
    key = name.strip().lower()
    names = [c.lower() for c in classes]
    if key in names:
        return names.index(key)
    if key.isdigit() and 0 < int(key) < len(classes):
        return int(key)
    raise UserError(f"{where}: '{name}' is not one of the structures {', '.join(classes[1:])}")


_disk = AN.disk


def _surrounding(layout: np.ndarray, region: np.ndarray, exclude: int) -> int:
    """The most frequent class on the ring just outside ``region`` (other than ``exclude``)."""
    ring = ndimage.binary_dilation(region, _disk(2)) & ~region
    vals = layout[ring]
    vals = vals[(vals != exclude) & (vals >= 0)]
    return int(np.bincount(vals).argmax()) if vals.size else 0


def parse_anomaly(spec: str) -> tuple[str, float] | None:
    """(name, severity) of an ``anomaly:NAME[:S]`` spec (checked), None for another operator."""
    parts = [p.strip() for p in spec.split(":")]
    if parts[0].lower() != "anomaly":
        return None
    where = f"edit '{spec}'"
    if len(parts) < 2 or not parts[1]:
        raise UserError(f"{where}: expected anomaly:NAME[:SEVERITY] (names: {', '.join(AN.ANOMALIES)})")
    try:
        sev = float(parts[2]) if len(parts) > 2 and parts[2] else None
    except ValueError as err:
        raise UserError(f"{where}: severity '{parts[2]}' is not a number") from err
    a, s = AN.anomaly(parts[1], sev, where)
    return a.name, s


def anomaly_spec(name: str, severity: float | None = None) -> str:
    a, s = AN.anomaly(name, severity)
    return f"anomaly:{a.name}:{s:g}"


def check_anomaly_classes(classes: list[str], where: str) -> None:
    want = ["background", "head", "bone", "th", "csp", "fp"]
    if [c.lower() for c in classes[: len(want)]] != want:
        raise UserError(f"{where}: anomaly edits need the classes {', '.join(want)} in this order (data.classes is {', '.join(classes)})")


def apply_edit(layout: np.ndarray, spec: str, classes: list[str], ga: float = float("nan")) -> np.ndarray:
    """``layout`` edited by one operator ``spec`` (see the module docstring); a copy. ``ga``:
    the frame's gestational age in weeks (the anomalies measured in mm need it)."""
    where = f"edit '{spec}'"
    anom = parse_anomaly(spec)
    if anom is not None:
        check_anomaly_classes(classes, where)
        return AN.apply_anomaly(layout, anom[0], anom[1], ga, where=f"anomaly {anom[0]}")
    parts = spec.split(":")
    op = parts[0].strip().lower()
    if op not in OPERATORS:
        raise UserError(f"{where}: unknown operator '{op}' (known: {', '.join(OPERATORS)}, anomaly)")
    if len(parts) < 2:
        raise UserError(f"{where}: expected {op}:CLASS" + ("" if op == "remove" else ":AMOUNT"))
    c = class_index(parts[1], classes, where)
    arg = parts[2] if len(parts) > 2 else None
    return OPERATORS[op](layout.copy(), c, arg, where)


def _remove(layout, c, arg, where):
    region = layout == c
    if region.any():
        layout[region] = _surrounding(layout, region, c)
    return layout


def _amount(arg, where, default=2) -> int:
    try:
        n = int(arg) if arg is not None else default
    except ValueError as err:
        raise UserError(f"{where}: amount '{arg}' is not a whole number of pixels") from err
    if not 1 <= n <= 64:
        raise UserError(f"{where}: amount {n} is outside 1..64 pixels")
    return n


def _grow(layout, c, arg, where):
    n = _amount(arg, where)
    region = layout == c
    grown = ndimage.binary_dilation(region, _disk(n)) & (layout > 0)
    layout[grown] = c
    return layout


def _shrink(layout, c, arg, where):
    n = _amount(arg, where)
    region = layout == c
    kept = ndimage.binary_erosion(region, _disk(n))
    gone = region & ~kept
    if gone.any():
        layout[gone] = _surrounding(layout, region, c)
    return layout


def _shift(layout, c, arg, where):
    try:
        dy, dx = (int(v) for v in (arg or "").split(","))
    except ValueError as err:
        raise UserError(f"{where}: expected shift:CLASS:DY,DX in pixels") from err
    region = layout == c
    if not region.any():
        return layout
    fill = _surrounding(layout, region, c)
    moved = np.roll(region, (dy, dx), axis=(0, 1))
    layout[region] = fill
    layout[moved & (layout > 0)] = c  # stays inside the head
    return layout


def _scale(layout, c, arg, where):
    try:
        f = float(arg)
    except (TypeError, ValueError) as err:
        raise UserError(f"{where}: expected scale:CLASS:FACTOR, a number such as 1.15") from err
    if not 0.5 <= f <= 2.0:
        raise UserError(f"{where}: factor {f:g} is outside 0.5..2")
    region = ndimage.binary_fill_holes(layout == c)  # the structure with everything it encloses
    if not region.any():
        return layout
    cy, cx = ndimage.center_of_mass(region)
    inside = np.where(region, layout, -2)
    # nearest-neighbour resampling about the centre: output pixel p takes input pixel centre + (p - centre) / f
    moved = ndimage.affine_transform(inside, np.eye(2) / f, offset=(np.array([cy, cx]) * (1 - 1 / f)), order=0, cval=-2)
    fill = _surrounding(layout, region, c)
    layout[region] = fill
    layout[moved != -2] = moved[moved != -2]
    return layout


OPERATORS = {"remove": _remove, "grow": _grow, "shrink": _shrink, "shift": _shift, "scale": _scale}


# ----------------------------------------------------------------------------- real-head layouts

HC18_ASPECT = 0.79  # median minor/major axis ratio of the annotated HC18 training heads (hc18-faults, every 3rd frame)


def head_layout(size, pixel_mm, hc_mm: float, classes: list[str], *, centre=(0.5, 0.5), angle: float = 0.0,
                aspect: float = HC18_ASPECT, where: str = "--hc") -> np.ndarray:
    """A real-head layout: the filled ellipse (class ``head``) whose perimeter is ``hc_mm``.

    ``size`` (H, W) pixels; ``pixel_mm`` (row, column) mm per pixel at that size (a resized frame has
    rectangular pixels); ``centre`` as fractions of (H, W); ``angle`` of the major axis in degrees
    from the horizontal; ``aspect`` minor / major axis. The perimeter is Ramanujan's, as
    :mod:`diffice.metrics.biometry` measures it. UserError naming ``where`` for a head that does not fit.
    """
    h, w = int(size[0]), int(size[1])
    head = class_index("head", classes, where)
    if not (hc_mm > 0 and 0.2 <= aspect <= 1.0):
        raise UserError(f"{where}: a head needs HC > 0 mm and an aspect in 0.2..1 (got HC {hc_mm:g} mm, aspect {aspect:g})")
    a = float(hc_mm) / AN.ellipse_perimeter(1.0, float(aspect))  # semi-major axis in mm
    b = a * float(aspect)
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    dy = (yy - float(centre[0]) * (h - 1)) * float(pixel_mm[0])
    dx = (xx - float(centre[1]) * (w - 1)) * float(pixel_mm[1])
    t = np.radians(float(angle))
    u = dx * np.cos(t) - dy * np.sin(t)  # along the major axis (angle counter-clockwise on the screen)
    v = dx * np.sin(t) + dy * np.cos(t)
    inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    edge = inside[0].any() or inside[-1].any() or inside[:, 0].any() or inside[:, -1].any()
    if edge or inside.sum() < 20:
        raise UserError(f"{where}: a head of HC {hc_mm:g} mm at {float(pixel_mm[0]):.3g} x {float(pixel_mm[1]):.3g} mm per pixel "
                        f"does not fit inside the {w}x{h} frame (choose another HC, --pixel-mm or --centre)")
    layout = np.zeros((h, w), dtype=np.int64)
    layout[inside] = head
    return layout


def edited_region(before: np.ndarray, after: np.ndarray, dilation: int = 0) -> np.ndarray:
    """Pixels whose class changed, grown by ``dilation`` pixels (bool (H, W))."""
    return grown(before != after, dilation)


def grown(region: np.ndarray, dilation: int) -> np.ndarray:
    """``region`` (bool (H, W)) grown by ``dilation`` pixels."""
    if dilation > 0 and region.any():
        return ndimage.binary_dilation(region, _disk(int(dilation)))
    return region


# ----------------------------------------------------------------------------- pictures and anomaly specs


def colour_layout(layout: np.ndarray) -> np.ndarray:
    """RGB uint8 picture of a layout: class colours (``io.PALETTE``) on dark grey, unspecified pixels mid grey."""
    return overlay(np.where(layout == -1, 128, 40).astype(np.uint8), layout, alpha=1.0)


def overlay_classes(frame, classes: np.ndarray) -> np.ndarray:
    """A frame (tensor in [-1, 1]) with its class map in colour."""
    return overlay(to_uint8(frame), classes)


def layout_png(layout: np.ndarray) -> np.ndarray:
    """The layout as a class-index PNG array (255 = unspecified), readable by ``--layout``."""
    out = layout.astype(np.int64).copy()
    out[out < 0] = 255
    return out.astype(np.uint8)


def anomaly_specs(names: str, severity: float | None) -> list[str]:
    """``anomaly:NAME:S`` edit specs of ``--anomaly`` (comma-separated names or 'all') at ``--severity``."""
    keys = [n.strip() for n in str(names or "").split(",") if n.strip()]
    if not keys:
        if severity is not None:
            raise UserError("--severity needs --anomaly NAME")
        return []
    if keys == ["all"]:
        keys = [k for k in AN.ANOMALIES if k != "ventriculomegaly"]  # the layouts have no ventricle class
    return [anomaly_spec(k, severity) for k in keys]
