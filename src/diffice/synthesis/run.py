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

import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from diffice.diffusion import generators_for
from diffice.errors import UserError
from diffice.io import to_uint8
from diffice.nets.fixed_batch import fixed
from diffice.progress import Bar
from diffice.runfolder import is_finished, read_records, remove_unfinished, write_frame
from diffice.runfolder.stamp import RunKind
from diffice.synthesis import metrics as M
from diffice.synthesis import sampler as S
from diffice.synthesis.jobs import SHAM, EditJob, LayoutJob, anomaly_check, changed_region, test_jobs
from diffice.synthesis.layouts import colour_layout, layout_png, overlay_classes
from diffice.synthesis.summary import finish, realism_metrics

SAMPLE_STRIDE = 1000  # sample j of layout i is seeded by (seed, i * SAMPLE_STRIDE + j)


def _cfg_calls(w) -> int:
    """Denoiser evaluations a sampling step costs at guidance ``w`` (conditional and unconditional unless w = 1)."""
    return 1 if float(w) == 1.0 else 2


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
        from diffice.nets.autocast import with_precision

        net = with_precision(self.module.ema_model.eval(), str(self.s.autocast), "synthesis.autocast")
        self.net = fixed(net, self.s.net_batch)  # every call at net_batch samples
        self.diffusion = self.module.sampler(str(self.s.respacing))
        if str(self.s.anchor) not in ("none", "prealign"):
            raise UserError(f"synthesis.anchor: '{self.s.anchor}' is not one of none, prealign")
        if str(self.s.anchor) == "prealign" and self.module.ema_model.prealign is None:
            raise UserError(f"synthesis.anchor=prealign: {ckpt} has no pre-alignment encoder (trained with synthesis.prealign=false); "
                            "use synthesis.anchor=none")
        if int(self.s.anchor_factor) < 1 or not 0.0 <= float(self.s.anchor_until) <= 1.0:
            raise UserError(f"synthesis.anchor_factor ({self.s.anchor_factor}) must be >= 1 and synthesis.anchor_until "
                            f"({self.s.anchor_until}) in [0, 1]")
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

    def anchor(self, layout: torch.Tensor) -> S.Anchor | None:
        """The low-frequency anchor of ``synthesis.anchor`` for one-hot ``layout`` (B, C, H, W), or None."""
        if str(self.s.anchor) == "none":
            return None
        with torch.no_grad():  # the pre-alignment encoder's frame, one layout at a time (batch-independent)
            ref = torch.cat([self.module.ema_model.appearance(layout[i : i + 1].float()) for i in range(layout.shape[0])])
        return S.Anchor(self.diffusion, ref.float().clamp(-1, 1), int(self.s.anchor_factor), float(self.s.anchor_until))

    def seed_ids(self, index: int, count: int) -> list[int]:
        return [int(index) * SAMPLE_STRIDE + j for j in range(count)]

    def draw(self, jobs: list[LayoutJob], count: int) -> list[dict]:
        """``count`` samples of each job; per job a dict of tensors and numbers."""
        seed = int(self.cfg.seed)
        layouts = torch.stack([torch.from_numpy(j.layout) for j in jobs for _ in range(count)])
        ids = [sid for j in jobs for sid in self.seed_ids(j.index, count)]
        cond = S.make_condition(layouts, [j.plane for j in jobs for _ in range(count)],
                                [j.ga for j in jobs for _ in range(count)], self.num_classes, self.device)
        anchor = self.anchor(cond["layout"])
        t0 = time.perf_counter()
        if self.steer is not None:
            res = S.two_stage(self.diffusion, self.net, cond, layouts, ids, seed, self.steer, self.num_classes,
                              w1=float(self.s.stage1_guidance), w2=float(self.s.stage2_guidance),
                              stage2_range=list(self.s.stage2_range), dice_target=float(self.s.dice_target),
                              rounds=int(self.s.rounds), anchor=anchor)
            frames, stage1 = res.frames, res.stage1
            k, c1, c2 = self.diffusion.num_timesteps, _cfg_calls(self.s.stage1_guidance), _cfg_calls(self.s.stage2_guidance)
            extra = [{"steer_dice_stage1": float(res.dice_stage1[i]), "steer_dice": float(res.dice_final[i]),
                      "restart_steps": res.restart_steps[i], "kept_round": res.kept_round[i],
                      "nfe": k * c1 + sum(r + 1 for r in res.restart_steps[i]) * c2} for i in range(len(ids))]
        else:
            frames = S.sample(self.diffusion, self.net, cond, generators_for(seed, ids), w=float(self.s.guidance), anchor=anchor)
            stage1 = None
            extra = [{"nfe": self.diffusion.num_timesteps * _cfg_calls(self.s.guidance)} for _ in ids]
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
    dice = layout_dice(judged, lay, syn.classes) if judged is not None else [None] * frames.shape[0]
    if judged is not None and job.real is not None:
        real = torch.from_numpy(job.real)[None, None].float()
        judged_real = syn.judge(real)
        rec["judge_dice_real"] = layout_dice(judged_real, torch.from_numpy(job.layout)[None], syn.classes)[0]
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
        for j, d in enumerate(layout_dice(s1, lay, syn.classes)):
            rec["samples"][j]["judge_dice_stage1"] = d
    rec["diversity"] = M.diversity(frames)
    write_frame(out, rec, images, folder="layouts")
    return rec


def layout_dice(pred: torch.Tensor, layout: torch.Tensor, classes: list[str]) -> list[dict]:
    """Per sample {class: Dice or None} for the structures (classes >= 1) the layout requests."""
    d = S.layout_dice(pred, layout, len(classes))  # a requested class has a Dice (0 when the sample lacks it)
    return [{classes[c]: float(d[i, c]) if bool((layout[i] == c).any()) else None for c in range(1, len(classes))}
            for i in range(d.shape[0])]


def run_layouts(out: Path, syn: Synthesizer, jobs: list[LayoutJob], count: int, batch_size: int, progress: bool = True) -> list[dict]:
    remove_unfinished(out, "layouts")
    todo = [j for j in jobs if not is_finished(out, j.index, "layouts")]
    per_batch = max(1, int(batch_size) // max(1, count))
    bar = Bar("synthesising layouts", len(jobs), done=len(jobs) - len(todo), enabled=progress)
    for b in range(0, len(todo), per_batch):
        chunk = todo[b : b + per_batch]
        for job, drawn in zip(chunk, syn.draw(chunk, count), strict=True):
            write_layout_job(out, syn, job, drawn)
            bar.advance()
    bar.close()
    return read_records(out, [j.index for j in jobs], folder="layouts") if jobs else []


# ----------------------------------------------------------------------------- edits


def run_edits(out: Path, syn: Synthesizer, jobs: list[EditJob], batch_size: int, progress: bool = True) -> list[dict]:
    remove_unfinished(out, "edits")
    s = syn.s
    todo = [j for j in jobs if not is_finished(out, j.name, "edits")]
    bar = Bar("editing frames", len(jobs), done=len(jobs) - len(todo), enabled=progress)
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
        changed = torch.stack([torch.from_numpy(changed_region(j)) for j in chunk])
        psnr, ssim = M.psnr_ssim_outside(edited.cpu(), src.cpu(), changed)
        held_psnr, _ = M.psnr_ssim_outside(edited.cpu(), src.cpu(), ~known[:, 0])
        exact = [bool(k.any() and (e == f)[k].all()) for e, f, k in zip(edited.cpu(), src.cpu(), known, strict=True)]
        judged = syn.judge(edited) if syn.judge is not None else None
        judged_src = syn.judge(src) if syn.judge is not None else None
        for i, job in enumerate(chunk):
            ch = changed[i].numpy()
            rec = {"index": job.index, "name": job.name, "id": job.id, "edit": job.spec, "plane": job.plane,
                   "ga": None if math.isnan(job.ga) else job.ga,
                   "repaint": bool(s.repaint), "changed_pixels": int(ch.sum()), "psnr_outside": psnr[i], "ssim_outside": ssim[i],
                   "psnr_held": held_psnr[i], "held_exact": exact[i], "held_pixels": int(known[i].sum()),
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
                rec["judge_dice"] = layout_dice(judged[i : i + 1], after[i : i + 1], syn.classes)[0]
                images["judge.png"] = overlay_classes(edited[i], jp)
            if job.region is not None:
                rec.update({"anomaly": "", "sham_of": job.spec[len(SHAM):]})
            if job.anomaly:
                rec.update(anomaly_check(job, *((judged[i].numpy(), judged_src[i].numpy()) if judged is not None else (None,))))
            write_frame(out, rec, images, folder="edits", name=job.name)
            bar.advance()
    bar.close()
    return [r for r in read_records(out, folder="edits") if r["name"] in {j.name for j in jobs}]


# keys that do not change an item of a synthesis run (which items exist, how they are batched, where)
_FREE = {"limit", "batch_size", "out"}


def synthesis_config(cfg: dict, ckpt: str) -> dict:
    """What determines a synthesis run's items: the checkpoint, seed, data and synthesis keys."""
    syn = {k: v for k, v in (cfg.get("synthesis") or {}).items() if k not in _FREE}
    return {"ckpt": str(Path(ckpt).resolve()), "seed": cfg.get("seed"), "data": cfg.get("data"), "synthesis": syn}


def _legacy_settings(path: Path) -> dict:
    """The settings of a run folder an older diffice stamped with ``synthesis-run.json``."""
    import json

    return json.loads(path.read_text())


def _effective(settings: dict) -> dict:
    """Settings without the keys that change nothing: the anchor's parameters while it is off, and
    offset_noise (a training key: the checkpoint, stamped by its path, already carries it)."""
    syn = dict(settings.get("synthesis") or {})
    syn.pop("offset_noise", None)
    if syn.get("anchor", "none") == "none":
        syn.pop("anchor_factor", None)
        syn.pop("anchor_until", None)
    return {**settings, "synthesis": syn}


RUN_KIND = RunKind("synthesis", "synthesis run", items=("layouts", "edits"), fix="choose another --out or delete it",
                   legacy=("synthesis-run.json", _legacy_settings),
                   added=(("synthesis.autocast", "none"), ("synthesis.anchor", "none")), canonical=_effective)


def prepare_run_folder(out: Path, cfg: DictConfig, ckpt: str) -> None:
    """Refuse ``out`` when it holds a run made with another checkpoint or settings (its finished
    items would be mixed with new ones); otherwise create it and stamp it with the run's settings."""
    from diffice.config import to_dict
    from diffice.runfolder import claim_run_folder

    claim_run_folder(out, RUN_KIND, synthesis_config(to_dict(cfg), ckpt))


# ----------------------------------------------------------------------------- a run


def synthesize(out: Path, cfg: DictConfig, syn: Synthesizer, *, layouts: list[LayoutJob] | None = None, count: int = 1,
               edits: list[EditJob] | None = None, edit_batch: int | None = None, realism_data=None, report: bool = True,
               wait: bool = False, what: str = "diffice synthesize") -> dict:
    """One writer into ``out``: the folder checked and stamped, ``config.yaml``, the samples of
    ``layouts`` (``count`` each; None: none), the ``edits`` (None: none), FID / FSD against
    ``realism_data`` (a set-up DataModule; None: not computed), then :func:`~diffice.synthesis.summary.finish`."""
    from diffice.config import save_config
    from diffice.runlock import run_lock

    batch = int(cfg.synthesis.batch_size)
    with run_lock(out, what, wait=wait):
        prepare_run_folder(out, cfg, syn.ckpt)
        save_config(cfg, out / "config.yaml")
        lrecs = [] if layouts is None else run_layouts(out, syn, layouts, count, batch)
        erecs = [] if edits is None else run_edits(out, syn, edits, batch if edit_batch is None else edit_batch)
        realism = None if realism_data is None or not lrecs else realism_metrics(cfg, syn, out, lrecs, realism_data, syn.device)
        return finish(out, cfg, syn, lrecs, erecs, realism, report=report)


def run_test(cfg: DictConfig, ckpt: str, out: Path, device, *, count: int | None = None, edits_only: bool = False,
             realism: bool = True, report: bool = True, wait: bool = False) -> tuple[dict, list[str]]:
    """``diffice synthesize --test``: the layouts of the ``synthesis.split`` frames (``synthesis.limit``
    of them, ``count`` samples each, default ``synthesis.count``) and their edits (``synthesis.edits``),
    with metrics; returns (metrics.json, the model's classes)."""
    syn = Synthesizer(cfg, ckpt, device)
    count = count or int(cfg.synthesis.count)
    limit = cfg.synthesis.limit
    layouts, edits, dm = test_jobs(cfg, syn, None if limit is None else int(limit), list(cfg.synthesis.edits))
    m = synthesize(out, cfg, syn, layouts=None if edits_only else layouts, count=count, edits=edits,
                   realism_data=dm if realism else None, report=report, wait=wait, what="diffice synthesize --test")
    return m, syn.classes
