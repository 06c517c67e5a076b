"""Counterfactuals as a Lightning predict step: models from checkpoints, one file set per frame.

``run_counterfactuals(cfg)`` selects the inputs (``cf.split``'s frames with label ``cf.label``,
at most ``cf.limit``), skips frames already finished in ``cf.out`` (their ``record.json``
exists), predicts the rest with :class:`CounterfactualModule` under a Trainer built from
``cfg.trainer`` (``inference_mode=False``: guidance needs gradients), and writes
``results.csv``. Under DDP Lightning's unrepeated predict sampler gives each frame to exactly
one process, which writes it; ``predict_step`` makes no collective call. Under
``trainer.precision=bf16-mixed`` / ``16-mixed`` Lightning's autocast reaches the denoiser's forwards
without gradient and the judges; the engine computes the guidance in float32 (its networks in bf16
with ``cf.autocast=bf16``); the precision is part of the run folder's stamp.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from omegaconf import DictConfig
from torch import nn

from diffice.config import save_config, to_dict
from diffice.counterfactual.check import SCORED
from diffice.counterfactual.engine import CounterfactualEngine, FrameResult
from diffice.counterfactual.outputs import RUN_KIND, method_config, write_results_csv
from diffice.counterfactual.settings import CFSettings, check_precision
from diffice.errors import UserError
from diffice.io import overlay, to_uint8
from diffice.metrics.biometry import biometry_fields
from diffice.metrics.locality import change_locality
from diffice.metrics.target import sector_l1, target_l1
from diffice.metrics.texture import hf_energy
from diffice.modules.cf_inputs import reference_hf_threshold, select_inputs
from diffice.nets.dice import dice, dice_or_none
from diffice.nets.fixed_batch import fixed
from diffice.runfolder import (
    check_run_folder,
    is_finished,
    read_records,
    remove_unfinished,
    write_frame,
    write_stamp,
)


@dataclass
class Components:
    """The networks a counterfactual run needs (all frozen, eval mode).

    ``diffusion``: respaced ``GaussianDiffusion``; ``model``: denoiser (EMA weights);
    ``guide``: ``guide(x) -> (B,)`` SP logit with ``.segment(x) -> (B,K,H,W)``; ``oracle``:
    ``oracle(x) -> dict(concepts, qs_o)``; ``features``: object with ``.perceptual`` and
    ``.perceptual_l2``. ``concepts``: the oracle's concept names.
    """

    diffusion: Any
    model: nn.Module
    guide: nn.Module
    oracle: nn.Module
    features: nn.Module
    concepts: list[str]


def _finite(v: torch.Tensor) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def _check_size(path: str, ck_cfg: DictConfig, cfg: DictConfig) -> None:
    have = list(ck_cfg.data.image_size)
    want = list(cfg.data.image_size)
    if have != want:
        raise UserError(
            f"{path}: model trained at image size {have} but data.image_size is {want}; "
            f"set data.image_size={have} or retrain the model at {want}"
        )


def _check_noise_level(path: str, ddpm, diffusion, cfg: DictConfig) -> None:
    """Refuse a cf.tau whose noise level the DDPM never saw in training (``ddpm.train_max_t``)."""
    tau = int(cfg.cf.tau)
    if not 1 <= tau <= diffusion.num_timesteps:
        return  # CFSettings.validate names the key
    t = int(diffusion.timestep_map[tau - 1])
    trained = ddpm.max_train_t()
    if t >= trained:
        raise UserError(
            f"cf.tau: {tau} of {cfg.cf.respacing} starts at t = {t} of {diffusion.original_num_steps}, but "
            f"{path} was trained only on t < {trained} (ddpm.train_max_t = {float(ddpm.cfg.ddpm.train_max_t):g}); "
            f"lower cf.tau or retrain with a larger ddpm.train_max_t"
        )


def load_components(cfg: DictConfig) -> Components:
    """Rebuild DDPM (EMA), guide, oracle and feature nets from ``cf.*_ckpt``; check image sizes."""
    from diffice.diffusion import build_diffusion
    from diffice.modules.common import load_checkpoint
    from diffice.nets.features import load_feature_nets

    c = cfg.cf
    ddpm = load_checkpoint(c.ddpm_ckpt, "ddpm")
    _check_size(c.ddpm_ckpt, ddpm.cfg, cfg)
    classifier = load_checkpoint(c.guide_ckpt, "classifier")
    _check_size(c.guide_ckpt, classifier.cfg, cfg)
    oracle_module = load_checkpoint(c.oracle_ckpt, "oracle")
    _check_size(c.oracle_ckpt, oracle_module.cfg, cfg)
    # the schedule is the one the DDPM was trained with; only the respacing comes from cf
    diffusion = build_diffusion(ddpm.cfg, respacing=str(c.respacing))
    _check_noise_level(c.ddpm_ckpt, ddpm, diffusion, cfg)
    guide = classifier.guide
    oracle = oracle_module.oracle
    features = load_feature_nets(cfg, guide=guide, ddpm=ddpm.ema_model, oracle=oracle)
    concepts = list(getattr(oracle, "concept_names", None) or oracle_module.cfg.data.concepts)
    return Components(diffusion, ddpm.ema_model, guide, oracle, features, concepts)


def _freeze(net: nn.Module) -> nn.Module:
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def _peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(rss if sys.platform == "darwin" else rss * 1024)


class CounterfactualModule(L.LightningModule):
    """Runs ``cf.method`` on each predict batch; returns per-frame records and images.

    ``components`` (tests, benchmarks) skips loading checkpoints.
    """

    def __init__(self, cfg: DictConfig, components: Components | None = None):
        super().__init__()
        self.cfg = cfg
        comps = components if components is not None else load_components(cfg)
        self.diffusion = comps.diffusion
        self.model = _freeze(comps.model)
        self.guide = _freeze(comps.guide)
        self.oracle = _freeze(comps.oracle)
        # only the perceptual network is needed here (the FID / SonoNet nets are the report's)
        self.perceptual = _freeze(comps.features.perceptual)
        self.perceptual_l2 = getattr(comps.features, "perceptual_l2", None)
        self.concepts = list(comps.concepts)
        self.settings = CFSettings.from_config(cfg)
        self.settings.validate(getattr(self.diffusion, "num_timesteps", None))
        self.classes = list(cfg.data.classes)  # mask class order of the guide's segmenter
        self.hf_threshold = float("nan")  # adversarial-texture flag; set by run_counterfactuals from real SP frames
        # the official SonoNet-16 as a judge nobody here trained (features.sononet_weights; real frames)
        self.brain_judge = load_brain_judge(cfg)

    def train(self, mode: bool = True):  # the networks stay in eval mode (batch-norm statistics)
        return super().train(False)

    def engine(self) -> CounterfactualEngine:
        from diffice.nets.features import perceptual_l2 as default_l2

        l2 = self.perceptual_l2 or default_l2
        return CounterfactualEngine(self.diffusion, self.model, self.guide, self.perceptual, self.settings, l2,
                                    segment=self.guide.segment if self.settings.sparse.uses_layout else None,
                                    evidence=self.guide.evidence if self.settings.sparse.uses_evidence else None)

    @torch.no_grad()
    def _judge(self, x: torch.Tensor) -> dict[str, Any]:
        """Guide probability, segmentation classes and oracle scores of x (B,1,H,W) in [-1,1]."""
        w = self.settings.net_batch  # the scores, too, do not depend on the batch
        p = torch.sigmoid(fixed(self.guide, w)(x).float().reshape(-1)).cpu()
        seg = fixed(self.guide.segment, w)(x).argmax(1).cpu().numpy()
        o = fixed(self.oracle, w)(x)
        return {"p": p.tolist(), "seg": seg, "qs": o["qs_o"].float().cpu().tolist(), "concepts": o["concepts"].float().cpu().numpy()}

    def _anatomy_dice(self, a: np.ndarray, b: np.ndarray) -> dict[str, float | None]:
        """Per structure, the guide's segmentation Dice between input and counterfactual (does the anatomy stay?)."""
        d = dice(a, b, len(self.classes))
        return {name: dice_or_none(d[c]) for c, name in enumerate(self.classes) if name in SCORED}

    def _named(self, row: np.ndarray) -> dict[str, float]:
        return {name: float(v) for name, v in zip(self.concepts, row, strict=False)}

    def predict_step(self, batch: dict, batch_idx: int = 0) -> list[dict]:
        x = batch["image"].float()
        indices = [int(i) for i in batch["index"]]
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
            torch.cuda.reset_peak_memory_stats(x.device)  # the peak of this batch, not of the run so far
        start = time.perf_counter()
        results: list[FrameResult] = self.engine().explain(x, indices)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        batch_seconds = time.perf_counter() - start  # the method alone: the judges' scoring is timed apart
        peak = _peak_memory_bytes(x.device)
        cf = torch.stack([r.cf for r in results]).to(x.device)
        before, after = self._judge(x), self._judge(cf)
        iter_judges = self._iterate_judges(results, x.device)
        hf_in, hf_cf = hf_energy(x).tolist(), hf_energy(cf).tolist()
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        ids = batch.get("id", [str(i) for i in indices])
        has_target = batch.get("has_target")
        target = batch.get("target")
        real = self._real_judges(batch, x, cf, before["seg"], after["seg"])
        judge_seconds = time.perf_counter() - start - batch_seconds
        frames = []
        for b, r in enumerate(results):
            t_l1_in = t_l1_cf = s_l1_in = s_l1_cf = None
            if has_target is not None and bool(has_target[b]):
                tgt = target[b : b + 1].float()
                t_l1_in = _finite(target_l1(x[b : b + 1], tgt)[0])
                t_l1_cf = _finite(target_l1(r.cf[None].to(tgt.device), tgt, reference=x[b : b + 1])[0])
                s_l1_in = _finite(sector_l1(x[b : b + 1], tgt)[0])
                s_l1_cf = _finite(sector_l1(r.cf[None].to(tgt.device), tgt)[0])
            record = {
                "index": r.index,
                "id": str(ids[b]),
                "method": self.settings.method,
                "lambda_c": r.lambda_c,
                "p_input": before["p"][b],
                "p_cf": r.p_cf,
                "p_iters": r.p_iters,
                "flipped": r.flipped,
                "guide_threshold": r.threshold,  # SP when p > it (the guide's calibrated threshold, or 0.5)
                "p_dense": r.p_iters[-1] if r.dense is not None else None,  # cf.sparse: before the refinement
                "sparse_mask_fraction": r.mask_fraction,
                "sparse_opening": r.sparse_opening,
                "concepts_input": self._named(before["concepts"][b]),
                "concepts_cf": self._named(after["concepts"][b]),
                "qs_input": before["qs"][b],
                "qs_cf": after["qs"][b],
                "qs_iters": iter_judges[b]["qs"],
                "concepts_iters": iter_judges[b]["concepts"],
                "target_l1_input": t_l1_in,
                "target_l1_cf": t_l1_cf,
                "target_sector_l1_input": s_l1_in,
                "target_sector_l1_cf": s_l1_cf,
                "anatomy_dice": self._anatomy_dice(before["seg"][b], after["seg"][b]),
                "change": change_locality(x[b].cpu(), r.cf.cpu(), before["seg"][b], self.classes,
                                          target[b].cpu() if t_l1_in is not None else None),
                **real[b],
                "hf_input": hf_in[b],
                "hf_cf": hf_cf[b],
                "hf_threshold": _finite(self.hf_threshold),
                "adversarial": bool(np.isfinite(self.hf_threshold) and hf_cf[b] > self.hf_threshold),
                "nfe": r.nfe,
                "seconds": batch_seconds / len(results),
                "judge_seconds": judge_seconds / len(results),
                "seconds_iters": r.seconds_iters,
                "iterations": r.iterations,
                "lambda_tries": r.attempts,
                "p_lambdas": r.p_lambdas,
                "batch_id": f"{self.global_rank}-{indices[0]}",
                "batch_seconds": batch_seconds,
                "batch_size": len(results),
                "peak_memory_bytes": peak,
                "device": str(x.device),
            }
            grey_in, grey_cf = to_uint8(x[b]), to_uint8(r.cf)
            images = {"input.png": grey_in}
            images.update({f"iter{k + 1}.png": to_uint8(it) for k, it in enumerate(r.iterates)})
            images["cf.png"] = grey_cf
            if r.dense is not None:
                images["dense.png"] = to_uint8(r.dense)
            images["seg_input.png"] = overlay(grey_in, before["seg"][b])
            images["seg_cf.png"] = overlay(grey_cf, after["seg"][b])
            if has_target is not None and bool(has_target[b]):  # also where the fault's footprint is empty
                images["target.png"] = to_uint8(target[b])
            frames.append({"record": record, "images": images})
        return frames

    @torch.no_grad()
    def _real_judges(self, batch: dict, x: torch.Tensor, cf: torch.Tensor, seg_in, seg_cf) -> list[dict]:
        """Per frame: head biometry (HC of the guide's segmenter's head on input, counterfactual and
        clean target, in mm where the data gives a pixel size) and, with the official SonoNet-16,
        its brain-plane probability and call of input, counterfactual and target."""
        n = len(x)
        has_target = batch.get("has_target")
        has = [bool(has_target[b]) if has_target is not None else False for b in range(n)]
        seg_t = None
        if any(has):
            seg_t = fixed(self.guide.segment, self.settings.net_batch)(batch["target"].float()).argmax(1).cpu().numpy()
        px, hc = batch.get("pixel_mm"), batch.get("hc_mm")
        out = [biometry_fields(seg_in[b], seg_cf[b], seg_t[b] if has[b] else None,
                               px[b].tolist() if px is not None else None, float(hc[b]) if hc is not None else float("nan"))
               for b in range(n)]
        if self.brain_judge is not None:
            frames = {"input": x, "cf": cf}
            if any(has):
                frames["target"] = batch["target"].float()
            for name, frames_ in frames.items():
                j = fixed(self.brain_judge, self.settings.net_batch)(frames_.to(x.device))
                for b in range(n):
                    keep = name != "target" or has[b]
                    out[b][f"p_brain_{name}"] = float(j["p_brain"][b]) if keep else None
                    out[b][f"brain_{name}"] = bool(j["brain"][b]) if keep else None
        return out

    @torch.no_grad()
    def _iterate_judges(self, results: list[FrameResult], device) -> list[dict]:
        """Oracle scores of every iteration's output (for Table 2 per iteration)."""
        flat = [(b, it) for b, r in enumerate(results) for it in r.iterates]
        out: list[dict] = [{"qs": [], "concepts": []} for _ in results]
        step = max(1, len(results))
        for s in range(0, len(flat), step):
            chunk = flat[s : s + step]
            o = fixed(self.oracle, self.settings.net_batch)(torch.stack([it for _, it in chunk]).to(device))
            for (b, _), qs, row in zip(chunk, o["qs_o"].float().cpu().tolist(), o["concepts"].float().cpu().numpy(), strict=True):
                out[b]["qs"].append(qs)
                out[b]["concepts"].append(self._named(row))
        return out


class FrameWriter(BasePredictionWriter):
    """Writes each predicted frame into ``{out}/frames/{index:06d}/`` (record.json last)."""

    def __init__(self, out: str | Path):
        super().__init__(write_interval="batch")
        self.out = Path(out)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        for frame in prediction:
            write_frame(self.out, frame["record"], frame["images"])


# ----------------------------------------------------------------------------- running


def load_brain_judge(cfg: DictConfig):
    """The official SonoNet-16 brain-plane judge when ``features.sononet_weights`` names its
    weights, else None (phantom frames: SonoNet does not take them for head scans)."""
    weights = cfg.features.get("sononet_weights") if "features" in cfg else None
    if not weights:
        return None
    from diffice.nets.sononet import BrainPlaneJudge

    return BrainPlaneJudge.from_official(str(weights))


def build_predict_trainer(cfg: DictConfig, out: Path, **overrides: Any) -> L.Trainer:
    from diffice.modules.training import make_trainer, trainer_kwargs

    kwargs = trainer_kwargs(cfg, out, [FrameWriter(out)])
    kwargs.update(inference_mode=False, logger=False)  # guidance differentiates w.r.t. images
    kwargs.update(overrides)
    return make_trainer(cfg, kwargs)


def run_counterfactuals(
    cfg: DictConfig,
    components: Components | None = None,
    datamodule=None,
    **trainer_overrides: Any,
) -> tuple[Path, list[int]] | None:
    """Generate the counterfactuals of the selected inputs into ``cf.out``.

    Returns ``(run folder, dataset indices of the inputs)`` on the global-zero process, None on
    the others. A rerun skips finished frames; a folder of another configuration is refused.
    """
    settings = CFSettings.from_config(cfg)
    settings.validate()
    check_precision(cfg.trainer.precision)
    out = Path(cfg.cf.out)
    from diffice.runlock import run_lock

    with run_lock(out, "diffice counterfactuals"):  # one writer per run folder (re-entrant: the command holds it too)
        return _run_locked(cfg, out, components, datamodule, **trainer_overrides)


def _run_locked(cfg: DictConfig, out: Path, components, datamodule, **trainer_overrides: Any) -> tuple[Path, list[int]] | None:
    settings = method_config(to_dict(cfg))
    check_run_folder(out, RUN_KIND, settings)
    if datamodule is None:
        from diffice.data import DiffIceDataModule

        datamodule = DiffIceDataModule(cfg)
    if hasattr(datamodule, "setup"):
        datamodule.setup()
    ds, positions, indices = select_inputs(cfg, datamodule)
    module = CounterfactualModule(cfg, components)  # loads and checks every model before writing
    module.hf_threshold = reference_hf_threshold(datamodule)
    save_config(cfg, out / "config.yaml")
    write_stamp(out, RUN_KIND, settings)
    remove_unfinished(out)  # temporary frame folders of a killed run
    todo = [pos for pos, idx in zip(positions, indices, strict=True) if not is_finished(out, idx)]
    rank_zero = True
    if todo:
        from diffice.data import loader_options

        trainer = build_predict_trainer(cfg, out, **trainer_overrides)
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, todo), batch_size=int(cfg.cf.batch_size),
                                             shuffle=False, **loader_options(cfg, trainer))
        trainer.predict(module, dataloaders=loader, return_predictions=False)
        trainer.strategy.barrier("diffice.counterfactuals.done")
        rank_zero = trainer.is_global_zero
    if not rank_zero:
        return None
    records = read_records(out, indices)
    missing = sorted(set(indices) - {int(r["index"]) for r in records})
    if missing:
        raise UserError(f"{out}: {len(missing)} frame(s) were not written (first: index {missing[0]}); run again to finish them")
    write_results_csv(out, records)
    return out, indices
