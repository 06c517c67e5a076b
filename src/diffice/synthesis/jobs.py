"""What a synthesis run does, as jobs: layouts to sample (:class:`LayoutJob`) and frames to edit
(:class:`EditJob`, an anomaly's or a sham's among them), the test split's jobs (:func:`test_jobs`),
and the check of an anomaly edit against what it asked for (:func:`anomaly_check`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from diffice.data import anomalies as AN
from diffice.errors import UserError
from diffice.synthesis.layouts import apply_edit, edited_region, parse_anomaly


@dataclass
class LayoutJob:
    index: int
    id: str
    layout: np.ndarray               # int64 (H, W), -1 unspecified
    plane: int = -1
    ga: float = math.nan
    real: np.ndarray | None = None   # (H, W) in [-1, 1]: the frame the layout came from (--test)


@dataclass
class EditJob:
    name: str
    index: int
    id: str
    spec: str
    source: np.ndarray               # (H, W) in [-1, 1]
    before: np.ndarray               # int64 (H, W)
    after: np.ndarray
    plane: int = -1
    ga: float = math.nan
    anomaly: str = ""                # an anomaly edit (anomaly:NAME:S): its name and severity
    severity: float | None = None
    region: np.ndarray | None = None # a sham edit: the pixels regenerated although the layout is unchanged


SHAM = "sham:"


def edit_job(name: str, index: int, id: str, spec: str, source: np.ndarray, before: np.ndarray, classes: list[str],
             plane: int = -1, ga: float = math.nan) -> EditJob | None:
    """The job of editing ``source`` (layout ``before``) by ``spec``; None when the edit changes
    nothing. ``sham:SPEC`` regenerates the pixels SPEC would change but keeps the layout: the
    pixel-paired normal control of an edit (same region, same sampler, no change of anatomy)."""
    inner = spec[len(SHAM):] if spec.startswith(SHAM) else spec
    after = apply_edit(before, inner, classes, ga)
    if not (after != before).any():
        return None
    if spec.startswith(SHAM):
        return EditJob(name, index, id, spec, source, before, before.copy(), plane, ga, region=after != before)
    anom = parse_anomaly(spec)
    return EditJob(name, index, id, spec, source, before, after, plane, ga, *(anom or ("", None)))


def changed_region(job: EditJob) -> np.ndarray:
    """The pixels an edit changes (a sham edit: the region it regenerates)."""
    return job.region if job.region is not None else edited_region(job.before, job.after, 0)


def anomaly_check(job: EditJob, judged: np.ndarray | None, judged_source: np.ndarray | None = None) -> dict:
    """The anomaly's quantity (:func:`diffice.data.anomalies.measure`) on the source layout, the
    requested (edited) layout and the judge's segmentation of the edited frame, all in the source
    layout's head coordinates, and whether the edited frame is within ``TOLERANCE`` of the request;
    the control: the same check on the judge's segmentation of the unedited source frame."""
    try:
        frame = AN.head_frame(job.before, need_front=False)
    except UserError:
        frame = None
    src = AN.measure(job.anomaly, job.before, frame)
    req = AN.measure(job.anomaly, job.after, frame)
    rec = {"anomaly": job.anomaly, "severity": job.severity, "source_value": src, "requested_value": req,
           "changed_width": AN.changed_width(job.before, job.after)}
    if judged is not None:
        got = AN.measure(job.anomaly, judged, frame)
        tol = AN.TOLERANCE[job.anomaly] * (1.0 if job.anomaly == "lemon" else abs(src))
        rec.update({"measured_value": got, "tolerance": tol,
                    "within_tolerance": bool(math.isfinite(got) and math.isfinite(req) and abs(got - req) <= tol)})
    if judged_source is not None:
        ctl = AN.measure(job.anomaly, judged_source, frame)
        rec.update({"measured_source": ctl,
                    "source_within_tolerance": bool(math.isfinite(ctl) and math.isfinite(req) and abs(ctl - req) <= tol)})
        rec["within_change"] = change_within(rec)
    return rec


def change_within(rec: dict) -> bool | None:
    """The judge's *change* (edited frame minus source frame) within the tolerance of the requested
    change (edited layout minus source layout): the check without the judge's own bias."""
    keys = ("measured_value", "measured_source", "requested_value", "source_value", "tolerance")
    if any(rec.get(k) is None for k in keys):
        return None
    got = float(rec["measured_value"]) - float(rec["measured_source"])
    want = float(rec["requested_value"]) - float(rec["source_value"])
    return bool(math.isfinite(got) and math.isfinite(want) and abs(got - want) <= float(rec["tolerance"]))


def head_pixel_mm(cfg: DictConfig, size, hc_mm: float, frames: int = 128) -> tuple[float, float]:
    """The pixel size (row, column mm at ``size``) at which a head of ``hc_mm`` is as large in pixels as the
    data set's training heads are at the median (HC over pixel size, evenly spread ``frames``): sonographers
    zoom to the head (HC and pixel size correlate 0.82 in HC18's training split), so a fixed pixel size would
    draw a large head off the frame. UserError when the data set has no frame with both known."""
    from diffice.data import DiffIceDataModule

    data_cfg = cfg.copy()
    data_cfg.data.image_size = [int(size[0]), int(size[1])]
    dm = DiffIceDataModule(data_cfg)
    ds = dm.dataset("train")
    pos = np.unique(np.linspace(0, len(ds) - 1, min(frames, len(ds))).round().astype(int)) if len(ds) else []
    ratios = []
    for p in pos:
        item = ds[int(p)]
        px, hc = item["pixel_mm"].numpy(), float(item["hc_mm"])
        if np.isfinite(px).all() and math.isfinite(hc) and hc > 0:
            ratios.append(hc / px)
    if not ratios:
        raise UserError("--pixel-mm: the data set (data.*) gives no training frame with a pixel size and an HC; "
                        "give --pixel-mm ROW,COLUMN (mm per pixel at the model's frame size)")
    k = np.median(np.array(ratios), axis=0)
    return float(hc_mm / k[0]), float(hc_mm / k[1])


def test_jobs(cfg: DictConfig, syn, limit: int | None, edits: list[str]) -> tuple[list[LayoutJob], list[EditJob], object]:
    """Layouts of the ``synthesis.split`` frames (evenly spread, at most ``limit``) and their edits."""
    from diffice.data import DiffIceDataModule

    label = cfg.synthesis.label
    if label is not None and str(label).upper() not in ("SP", "NSP"):
        raise UserError(f"synthesis.label={label}: expected SP, NSP or null (all frames)")
    data_cfg = cfg.copy()
    data_cfg.data.image_size = list(syn.size)
    data_cfg.data.classes = syn.classes
    dm = DiffIceDataModule(data_cfg)
    dm.setup()
    ds = dm.dataset(str(cfg.synthesis.split), label=label)
    n = len(ds)
    if n == 0:
        raise UserError(f"synthesis.split={cfg.synthesis.split}: no frames in that split")
    pos = list(range(n)) if limit is None or limit >= n else sorted(set(np.linspace(0, n - 1, int(limit)).round().astype(int).tolist()))
    layouts, edit_jobs = [], []
    for p in pos:
        item = ds[p]
        if not bool(item["has_mask"]):
            continue
        lay = item["mask"].numpy().astype(np.int64)
        if not (lay >= 1).any():
            continue
        plane, ga = int(item["plane"]), float(item["ga"])
        img = item["image"][0].numpy()
        layouts.append(LayoutJob(int(item["index"]), str(item["id"]), lay, plane, ga, img))
        for k, spec in enumerate(edits):
            anom = parse_anomaly(spec.removeprefix(SHAM))
            if anom and not AN.layout_shows(anom[0], lay):
                continue  # this frame lacks what the anomaly edits (no fossa posterior in a trans-thalamic plane, ...)
            job = edit_job(f"{int(item['index']):06d}-{k}", int(item["index"]), str(item["id"]), spec, img, lay, syn.classes, plane, ga)
            if job is not None:
                edit_jobs.append(job)
    if not layouts:
        raise UserError(f"synthesis.split={cfg.synthesis.split}: no frame with a mask to take a layout from")
    return layouts, edit_jobs, dm
