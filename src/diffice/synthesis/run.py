"""A synthesis run: layouts -> samples, and frames -> edits, into a resumable run folder.

Layout of ``{out}`` (files written like the counterfactual writer's: each item's folder is
written under a temporary name and renamed into place once its ``record.json`` is in it, so a
killed run leaves no half-written item and a rerun redoes only what is missing)::

    config.yaml
    layouts/{index:06d}/layout.png  real.png (--test)  stage1_{j}.png  sample_{j}.png  judge_{j}.png  record.json
    edits/{index:06d}-{k}/source.png  layout_before.png  layout_after.png  edited.png  diff.png  judge.png  record.json
    results.csv   metrics.json   report.html
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from diffice.counterfactual.outputs import (
    PALETTE,
    is_finished,
    read_records,
    remove_unfinished,
    write_frame,
    write_rows_csv,
)
from diffice.data import anomalies as AN
from diffice.diffusion import generators_for
from diffice.errors import UserError
from diffice.io import atomic_write_text, to_uint8
from diffice.nets.fixed_batch import fixed
from diffice.progress import live
from diffice.synthesis import metrics as M
from diffice.synthesis import sampler as S
from diffice.synthesis.layouts import apply_edit, edited_region, parse_anomaly

SAMPLE_STRIDE = 1000  # sample j of layout i is seeded by (seed, i * SAMPLE_STRIDE + j)


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


def _changed(job: EditJob) -> np.ndarray:
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
    rec = {"anomaly": job.anomaly, "severity": job.severity, "source_value": src, "requested_value": req}
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


def colour_layout(layout: np.ndarray) -> np.ndarray:
    """RGB uint8 picture of a layout: class colours on dark grey, unspecified pixels mid grey."""
    rgb = np.full((*layout.shape, 3), 40, dtype=np.uint8)
    rgb[layout == -1] = 128
    for c in range(1, int(layout.max()) + 1 if layout.size else 1):
        rgb[layout == c] = PALETTE[c % len(PALETTE)].astype(np.uint8)
    return rgb


def overlay_classes(frame: torch.Tensor, classes: np.ndarray) -> np.ndarray:
    from diffice.counterfactual.outputs import overlay

    return overlay(to_uint8(frame), classes)


def layout_png(layout: np.ndarray) -> np.ndarray:
    """The layout as a class-index PNG array (255 = unspecified), readable by ``--layout``."""
    out = layout.astype(np.int64).copy()
    out[out < 0] = 255
    return out.astype(np.uint8)


class Synthesizer:
    """The trained model and the networks around it, for one run."""

    def __init__(self, cfg: DictConfig, ckpt: str, device: str = "cpu", *, need_steer: bool = True, need_judge: bool = True):
        from diffice.modules.synthesis import load_synthesis

        self.cfg = cfg
        self.s = cfg.synthesis
        self.module = load_synthesis(ckpt, map_location=device)
        self.ckpt = str(ckpt)
        self.device = device
        self.classes = list(self.module.cfg.data.classes)
        self.size = tuple(int(v) for v in self.module.cfg.data.image_size)
        self.num_classes = len(self.classes)
        if self.s.net_batch is not None and int(self.s.net_batch) < 1:
            raise UserError(f"synthesis.net_batch: {self.s.net_batch} must be at least 1 (or null)")
        self.net = fixed(self.module.ema_model.eval(), self.s.net_batch)  # every call at net_batch samples
        self.diffusion = self.module.sampler(str(self.s.respacing))
        self.steer = self.judge = None
        if (need_steer and bool(self.s.two_stage) and need_judge and self.s.judge_ckpt and self.s.segmenter_ckpt
                and Path(str(self.s.judge_ckpt)).resolve() == Path(str(self.s.segmenter_ckpt)).resolve()):
            raise UserError(f"synthesis.judge_ckpt and synthesis.segmenter_ckpt are the same file ({self.s.judge_ckpt}): "
                            "the judge of layout fidelity must not be the segmentation that steers two-stage sampling")
        if need_steer and bool(self.s.two_stage):
            steer, steer_classes, _ = M.load_segment(self.s.segmenter_ckpt, device)
            self.steer = fixed(steer, self.s.net_batch)
            self._check_classes(steer_classes, "synthesis.segmenter_ckpt")
        if need_judge and self.s.judge_ckpt:
            judge, judge_classes, self.judge_kind = M.load_segment(self.s.judge_ckpt, device)
            self.judge = fixed(judge, self.s.net_batch)
            self._check_classes(judge_classes, "synthesis.judge_ckpt")

    def _check_classes(self, classes: list[str], key: str) -> None:
        if classes != self.classes:
            raise UserError(f"{key}: its classes {classes} differ from the synthesis model's {self.classes}")

    def seed_ids(self, index: int, count: int) -> list[int]:
        return [int(index) * SAMPLE_STRIDE + j for j in range(count)]

    def draw(self, jobs: list[LayoutJob], count: int) -> list[dict]:
        """``count`` samples of each job; per job a dict of tensors and numbers."""
        seed = int(self.cfg.seed)
        layouts = torch.stack([torch.from_numpy(j.layout) for j in jobs for _ in range(count)])
        ids = [sid for j in jobs for sid in self.seed_ids(j.index, count)]
        cond = S.make_condition(layouts, [j.plane for j in jobs for _ in range(count)],
                                [j.ga for j in jobs for _ in range(count)], self.num_classes, self.device)
        t0 = time.perf_counter()
        if self.steer is not None:
            res = S.two_stage(self.diffusion, self.net, cond, layouts, ids, seed, self.steer, self.num_classes,
                              w1=float(self.s.stage1_guidance), w2=float(self.s.stage2_guidance),
                              stage2_range=list(self.s.stage2_range), dice_target=float(self.s.dice_target),
                              rounds=int(self.s.rounds))
            frames, stage1 = res.frames, res.stage1
            extra = [{"steer_dice_stage1": float(res.dice_stage1[i]), "steer_dice": float(res.dice_final[i]),
                      "restart_steps": res.restart_steps[i], "kept_round": res.kept_round[i]} for i in range(len(ids))]
        else:
            frames = S.sample(self.diffusion, self.net, cond, generators_for(seed, ids), w=float(self.s.guidance))
            stage1, extra = None, [{} for _ in ids]
        seconds = (time.perf_counter() - t0) / len(ids)
        out = []
        for n in range(len(jobs)):
            sl = slice(n * count, (n + 1) * count)
            out.append({"frames": frames[sl], "stage1": stage1[sl] if stage1 is not None else None,
                        "extra": extra[sl], "seeds": ids[sl], "seconds_per_sample": seconds})
        return out


# ----------------------------------------------------------------------------- layouts


def write_layout_job(out: Path, syn: Synthesizer, job: LayoutJob, drawn: dict) -> dict:
    frames = drawn["frames"]
    lay = torch.from_numpy(job.layout)[None].expand(frames.shape[0], -1, -1)
    images = {"layout.png": colour_layout(job.layout), "layout_classes.png": layout_png(job.layout)}
    rec = {"index": job.index, "id": job.id, "plane": job.plane, "ga": None if math.isnan(job.ga) else job.ga,
           "seeds": drawn["seeds"], "seconds_per_sample": drawn["seconds_per_sample"], "samples": []}
    judged = syn.judge(frames) if syn.judge is not None else None
    dice = M_layout_dice(judged, lay, syn.classes) if judged is not None else [None] * frames.shape[0]
    if judged is not None and job.real is not None:
        real = torch.from_numpy(job.real)[None, None].float()
        judged_real = syn.judge(real)
        rec["judge_dice_real"] = M_layout_dice(judged_real, torch.from_numpy(job.layout)[None], syn.classes)[0]
        images["judge_real.png"] = overlay_classes(real[0], judged_real[0].numpy())
    if job.real is not None:
        images["real.png"] = to_uint8(job.real)
    for j in range(frames.shape[0]):
        images[f"sample_{j}.png"] = to_uint8(frames[j])
        if drawn["stage1"] is not None:
            images[f"stage1_{j}.png"] = to_uint8(drawn["stage1"][j])
        if judged is not None:
            images[f"judge_{j}.png"] = overlay_classes(frames[j], judged[j].numpy())
        rec["samples"].append({"seed_id": drawn["seeds"][j], "judge_dice": dice[j], **drawn["extra"][j]})
    if drawn["stage1"] is not None and judged is not None:
        s1 = syn.judge(drawn["stage1"])
        for j, d in enumerate(M_layout_dice(s1, lay, syn.classes)):
            rec["samples"][j]["judge_dice_stage1"] = d
    rec["diversity"] = M.diversity(frames)
    write_frame(out, rec, images, folder="layouts")
    return rec


def M_layout_dice(pred: torch.Tensor, layout: torch.Tensor, classes: list[str]) -> list[dict]:
    """Per sample {class: Dice or None} for the structures (classes >= 1) the layout requests."""
    d = S.layout_dice(pred, layout, len(classes))
    out = []
    for i in range(d.shape[0]):
        row = {}
        for c in range(1, len(classes)):
            asked = bool((layout[i] == c).any())
            row[classes[c]] = float(d[i, c]) if asked and not math.isnan(float(d[i, c])) else (0.0 if asked else None)
        out.append(row)
    return out


def run_layouts(out: Path, syn: Synthesizer, jobs: list[LayoutJob], count: int, batch_size: int, progress: bool = True) -> list[dict]:
    remove_unfinished(out, "layouts")
    todo = [j for j in jobs if not is_finished(out, j.index, "layouts")]
    per_batch = max(1, int(batch_size) // max(1, count))
    bar = _bar(progress, len(jobs), "synthesising layouts", len(jobs) - len(todo))
    for b in range(0, len(todo), per_batch):
        chunk = todo[b : b + per_batch]
        for job, drawn in zip(chunk, syn.draw(chunk, count), strict=True):
            write_layout_job(out, syn, job, drawn)
            _advance(bar)
    _stop(bar)
    return read_records(out, [j.index for j in jobs], folder="layouts") if jobs else []


# ----------------------------------------------------------------------------- edits


def run_edits(out: Path, syn: Synthesizer, jobs: list[EditJob], batch_size: int, progress: bool = True) -> list[dict]:
    remove_unfinished(out, "edits")
    s = syn.s
    todo = [j for j in jobs if not is_finished(out, j.name, "edits")]
    bar = _bar(progress, len(jobs), "editing frames", len(jobs) - len(todo))
    for b in range(0, len(todo), max(1, int(batch_size))):
        chunk = todo[b : b + int(batch_size)]
        src = torch.stack([torch.from_numpy(j.source)[None].float() for j in chunk]).to(syn.device)
        after = torch.stack([torch.from_numpy(j.after) for j in chunk])
        known = torch.stack([torch.from_numpy(S.known_region(j.before, j.after, int(s.edit_dilation), j.region))[None] for j in chunk])
        cond = S.make_condition(after, [j.plane for j in chunk], [j.ga for j in chunk], syn.num_classes, syn.device)
        ids = [SAMPLE_STRIDE * j.index + 900 + int(j.name.rsplit("-", 1)[-1]) for j in chunk]
        t0 = time.perf_counter()
        edited = S.edit(syn.diffusion, syn.net, cond, src, known, generators_for(int(syn.cfg.seed), ids),
                        w=float(s.guidance), repaint=bool(s.repaint), jump_length=int(s.jump_length),
                        jump_n_sample=int(s.jump_n_sample), start_fraction=float(s.edit_start))
        seconds = (time.perf_counter() - t0) / len(chunk)
        changed = torch.stack([torch.from_numpy(_changed(j)) for j in chunk])
        psnr, ssim = M.psnr_ssim_outside(edited.cpu(), src.cpu(), changed)
        held_psnr, _ = M.psnr_ssim_outside(edited.cpu(), src.cpu(), ~known[:, 0])
        judged = syn.judge(edited) if syn.judge is not None else None
        judged_src = syn.judge(src) if syn.judge is not None else None
        for i, job in enumerate(chunk):
            ch = changed[i].numpy()
            rec = {"index": job.index, "name": job.name, "id": job.id, "edit": job.spec, "plane": job.plane,
                   "ga": None if math.isnan(job.ga) else job.ga,
                   "repaint": bool(s.repaint), "changed_pixels": int(ch.sum()), "psnr_outside": psnr[i], "ssim_outside": ssim[i],
                   "psnr_held": held_psnr[i], "held_exact": held_psnr[i] == math.inf, "held_pixels": int(known[i].sum()),
                   "seconds": seconds, "seed_id": ids[i]}
            images = {"source.png": to_uint8(job.source), "layout_before.png": colour_layout(job.before),
                      "layout_after.png": colour_layout(job.after), "layout_after_classes.png": layout_png(job.after),
                      "layout_before_classes.png": layout_png(job.before), "edited.png": to_uint8(edited[i])}
            from diffice.report.records import difference_map

            images["diff.png"] = difference_map(images["source.png"], images["edited.png"])
            if judged is not None:
                jp, js = judged[i].numpy(), judged_src[i].numpy()
                rec["edit_accuracy"] = float((jp[ch] == job.after[ch]).mean()) if ch.any() else None
                rec["edit_accuracy_source"] = float((js[ch] == job.after[ch]).mean()) if ch.any() else None
                rec["judge_dice"] = M_layout_dice(judged[i : i + 1], after[i : i + 1], syn.classes)[0]
                images["judge.png"] = overlay_classes(edited[i], jp)
            if job.region is not None:
                rec.update({"anomaly": "", "sham_of": job.spec[len(SHAM):]})
            if job.anomaly:
                rec.update(anomaly_check(job, *((judged[i].numpy(), judged_src[i].numpy()) if judged is not None else (None,))))
            write_frame(out, rec, images, folder="edits", name=job.name)
            _advance(bar)
    _stop(bar)
    return [r for r in read_records(out, folder="edits") if r["name"] in {j.name for j in jobs}]


# ----------------------------------------------------------------------------- test jobs


def test_jobs(cfg: DictConfig, syn: Synthesizer, limit: int | None, edits: list[str]) -> tuple[list[LayoutJob], list[EditJob], object]:
    """Layouts of the ``synthesis.split`` frames (evenly spread, at most ``limit``) and their edits."""
    from diffice.data import DiffIceDataModule

    data_cfg = cfg.copy()
    data_cfg.data.image_size = list(syn.size)
    data_cfg.data.classes = syn.classes
    dm = DiffIceDataModule(data_cfg)
    dm.setup()
    ds = dm.dataset(str(cfg.synthesis.split))
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


# ----------------------------------------------------------------------------- summary


def summarize(syn: Synthesizer, layout_recs: list[dict], edit_recs: list[dict], realism: dict | None = None) -> dict:
    classes = syn.classes
    samples = [s for r in layout_recs for s in r["samples"]]
    m: dict = {"ckpt": syn.ckpt, "trained_steps": syn.module.trained_steps, "layouts": len(layout_recs), "samples": len(samples),
               "two_stage": syn.steer is not None, "prealign": bool(syn.module.cfg.synthesis.prealign),
               "repaint": bool(syn.s.repaint), "respacing": str(syn.s.respacing),
               "judge": str(syn.s.judge_ckpt) if syn.judge is not None else None}
    if syn.judge is not None and samples:
        m["dice"] = M.per_structure([s["judge_dice"] for s in samples], classes)
        if any("judge_dice_stage1" in s for s in samples):
            m["dice_stage1"] = M.per_structure([s["judge_dice_stage1"] for s in samples if "judge_dice_stage1" in s], classes)
        reals = [r["judge_dice_real"] for r in layout_recs if r.get("judge_dice_real")]
        if reals:
            m["dice_real"] = M.per_structure(reals, classes)
    if samples:
        m["seconds_per_sample"] = float(np.mean([r["seconds_per_sample"] for r in layout_recs]))
        div = [r["diversity"] for r in layout_recs if r["diversity"]["l1"] is not None and not math.isnan(r["diversity"]["l1"])]
        m["diversity_l1"] = float(np.mean([d["l1"] for d in div])) if div else None
        m["diversity_ssim_distance"] = float(np.mean([d["ssim_distance"] for d in div])) if div else None
        kept = [s.get("kept_round") for s in samples if "kept_round" in s]
        if kept:
            m["kept_stage2"] = sum(1 for k in kept if k and k > 0)
    if edit_recs:
        # (a record's inf was written as null: only an empty region or exact equality give inf / None)
        ps = [r["psnr_outside"] for r in edit_recs if r["psnr_outside"] is not None]
        finite = [p for p in ps if math.isfinite(p)]
        m["edits"] = len(edit_recs)
        m["edit_psnr_outside_mean"] = float(np.mean(finite)) if finite else (math.inf if ps else None)
        m["edit_psnr_outside_min"] = float(min(ps)) if ps else None
        m["edit_psnr_outside_at_least_30"] = sum(1 for p in ps if p >= 30)
        held = [r["psnr_held"] for r in edit_recs if r.get("psnr_held") is not None]
        m["edit_psnr_held_min"] = float(min(held)) if held else None  # inf (null in JSON) when every held region is exact
        m["edit_held_exact"] = sum(1 for r in edit_recs if r.get("held_exact"))
        m["edit_ssim_outside_mean"] = float(np.mean([r["ssim_outside"] for r in edit_recs if r["ssim_outside"] is not None]))
        acc = [r["edit_accuracy"] for r in edit_recs if r.get("edit_accuracy") is not None]
        acc0 = [r["edit_accuracy_source"] for r in edit_recs if r.get("edit_accuracy_source") is not None]
        m["edit_accuracy"] = float(np.mean(acc)) if acc else None
        m["edit_accuracy_source"] = float(np.mean(acc0)) if acc0 else None
        m["edit_seconds"] = float(np.mean([r["seconds"] for r in edit_recs]))
        names = sorted({r["anomaly"] for r in edit_recs if r.get("anomaly")})
        for r in edit_recs:
            if r.get("anomaly") and "within_change" not in r:
                r["within_change"] = change_within(r)
        if names:
            m["anomalies"] = {}
            for name in names:
                rs = [r for r in edit_recs if r.get("anomaly") == name]
                ok = [r["within_tolerance"] for r in rs if "within_tolerance" in r]
                m["anomalies"][name] = {"edits": len(rs), "severities": sorted({r["severity"] for r in rs}),
                                        "within_tolerance": sum(ok), "checked": len(ok),
                                        "fraction_within": float(np.mean(ok)) if ok else None,
                                        "source_within_tolerance": sum(bool(r.get("source_within_tolerance")) for r in rs),
                                        "within_change": sum(bool(r.get("within_change")) for r in rs)}
            ok = [r["within_tolerance"] for r in edit_recs if "within_tolerance" in r]
            m["anomaly_fraction_within"] = float(np.mean(ok)) if ok else None
    m["intervals"] = M.summary_intervals(layout_recs, edit_recs, classes)
    if realism:
        m.update(realism)
    return m


def realism_metrics(cfg: DictConfig, syn: Synthesizer, out: Path, layout_recs: list[dict], dm, device="cpu") -> dict:
    """FID (Inception) and FSD (oracle backbone / official SonoNet) of the samples against the real
    frames of the same planes in the split, and the same distances between those real frames and
    as many real training frames of those planes (the floor at this sample count)."""
    from diffice.nets.features import load_feature_nets
    from diffice.report.records import read_png

    try:
        feats = load_feature_nets(cfg, need_perceptual=False)
    except UserError as err:
        return {"realism_note": f"FID / FSD not computed: {err}"}
    planes = {r["plane"] for r in layout_recs}
    samples = []
    for r in layout_recs:
        d = out / "layouts" / f"{int(r['index']):06d}"
        samples += [read_png(p) for p in sorted(d.glob("sample_*.png"))]
    x = torch.from_numpy(np.stack(samples)).float()[:, None] / 127.5 - 1

    def real_frames(split: str, n: int | None) -> torch.Tensor:
        ds = dm.dataset(split)
        idx = [i for i in range(len(ds)) if ds.source.plane_of(int(ds.indices[i])) in planes]
        if n is not None and len(idx) > n:
            idx = [idx[k] for k in np.linspace(0, len(idx) - 1, n).round().astype(int)]
        return torch.stack([ds[i]["image"] for i in idx])

    real = real_frames(str(cfg.synthesis.split), None)
    train = real_frames("train", len(x))

    def fx(net, t):
        with torch.no_grad():
            return torch.cat([net(t[i : i + 32].to(device)).cpu() for i in range(0, len(t), 32)]).numpy().astype(np.float64)

    res = {"realism_samples": len(x), "realism_real": len(real), "realism_floor_frames": len(train)}
    for key, net in (("fid", feats.fid), ("fsd", feats.sononet)):
        try:
            fs, fr, ft = fx(net, x), fx(net, real), fx(net, train)
        except UserError as err:
            res[f"{key}_note"] = str(err)
            continue
        kid_key = "kid" if key == "fid" else "kid_fsd"
        res.update(M.realism_pair(key, kid_key, fs, fr))
        floor = M.realism_pair(f"{key}_floor", f"{kid_key}_floor", ft, fr)
        res.update({k: v for k, v in floor.items() if not k.endswith("_n")})
    res["fsd_features"] = getattr(feats, "sononet_source", "")
    return res


def write_results_csv(out: Path, layout_recs: list[dict], edit_recs: list[dict], classes: list[str]) -> Path:
    rows = []
    for r in layout_recs:
        for s in r["samples"]:
            row = {"kind": "layout", "index": r["index"], "id": r["id"], "plane": r["plane"], "seed_id": s["seed_id"]}
            for c in classes[1:]:
                row[f"dice_{c}"] = (s.get("judge_dice") or {}).get(c)
            row.update({k: s.get(k) for k in ("steer_dice_stage1", "steer_dice", "kept_round")})
            rows.append(row)
    for r in edit_recs:
        rows.append({"kind": "edit", "index": r["index"], "id": r["id"], "plane": r["plane"], "seed_id": r["seed_id"],
                     "edit": r["edit"], "psnr_outside": r["psnr_outside"], "ssim_outside": r["ssim_outside"],
                     "edit_accuracy": r.get("edit_accuracy"), "changed_pixels": r["changed_pixels"],
                     **{k: r.get(k) for k in ANOMALY_KEYS}})
    return write_rows_csv(out / "results.csv", rows)


ANOMALY_KEYS = ("anomaly", "severity", "source_value", "requested_value", "measured_value", "tolerance", "within_tolerance",
                "measured_source", "source_within_tolerance", "within_change")


def write_pairs_csv(out: Path, edit_recs: list[dict]) -> Path | None:
    """``pairs.csv``: one pixel-paired (source, edited) frame pair per edit, with both layouts."""
    if not edit_recs:
        return None
    rows = []
    for r in edit_recs:
        d = f"edits/{r['name']}"
        rows.append({"source": f"{d}/source.png", "edited": f"{d}/edited.png", "layout_source": f"{d}/layout_before_classes.png",
                     "layout_edited": f"{d}/layout_after_classes.png", "id": r["id"], "plane": r["plane"], "ga": r.get("ga"),
                     "edit": r["edit"], "anomaly": r.get("anomaly", ""), "severity": r.get("severity"), "sham_of": r.get("sham_of", ""),
                     "psnr_outside": r["psnr_outside"], "within_tolerance": r.get("within_tolerance")})
    return write_rows_csv(out / "pairs.csv", rows)


def finish(out: Path, cfg: DictConfig, syn: Synthesizer, layout_recs: list[dict], edit_recs: list[dict], realism: dict | None,
           report: bool = True) -> dict:
    from diffice.counterfactual.outputs import _clean

    metrics = summarize(syn, layout_recs, edit_recs, realism)
    write_results_csv(out, layout_recs, edit_recs, syn.classes)
    write_pairs_csv(out, edit_recs)
    atomic_write_text(out / "metrics.json", json.dumps(_clean(metrics), indent=1, sort_keys=True))
    if report:
        from diffice.synthesis.report import write_report

        write_report(out, metrics, layout_recs, edit_recs, syn.classes)
    from diffice.report.wandb_log import log_synthesis

    log_synthesis(out, cfg, metrics, layout_recs, edit_recs)
    return metrics


# keys that do not change an item of a synthesis run (which items exist, how they are batched, where)
_FREE = {"limit", "batch_size", "out"}


def synthesis_config(cfg: dict, ckpt: str) -> dict:
    """What determines a synthesis run's items: the checkpoint, seed, data and synthesis keys."""
    syn = {k: v for k, v in (cfg.get("synthesis") or {}).items() if k not in _FREE}
    return {"ckpt": str(Path(ckpt).resolve()), "seed": cfg.get("seed"), "data": cfg.get("data"), "synthesis": syn}


def prepare_run_folder(out: Path, cfg: DictConfig, ckpt: str) -> None:
    """Refuse ``out`` when it holds a run made with another checkpoint or settings (its finished
    items would be mixed with new ones); otherwise create it and record the run's settings."""
    import yaml

    from diffice.config import to_dict
    from diffice.counterfactual.outputs import _first_difference

    mine = synthesis_config(to_dict(cfg), ckpt)
    stamp = out / "synthesis-run.json"
    if stamp.is_file():
        try:
            theirs = json.loads(stamp.read_text())
        except ValueError as err:
            raise UserError(f"{stamp}: unreadable ({err}); delete the run folder or choose another --out") from err
        diff = _first_difference(yaml.safe_load(json.dumps(mine)), theirs)
        if diff:
            raise UserError(f"{out}: holds a synthesis run with other settings ({diff}); choose another --out or delete it")
    elif out.is_dir() and any((out / d).is_dir() and any((out / d).iterdir()) for d in ("layouts", "edits")):
        raise UserError(f"{out}: holds synthesis items but no synthesis-run.json; choose another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, json.dumps(mine, indent=1, sort_keys=True, default=str))


# ----------------------------------------------------------------------------- progress


def _bar(enabled: bool, total: int, label: str, done: int = 0):
    if not enabled or total == 0:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True, disable=not live())
    p.start()
    task = p.add_task(label, total=total, completed=done)
    return p, task


def _advance(bar) -> None:
    if bar is not None:
        bar[0].advance(bar[1])


def _stop(bar) -> None:
    if bar is not None:
        bar[0].stop()
