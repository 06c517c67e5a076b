"""All metrics of a counterfactual run, computed from its files (records + PNGs) alone.

Guide and oracle numbers come from the records (the engine computed them on float images);
image metrics (FID, FSD, SonoSim, and oracle scores of intermediate iterations when the
records lack ``qs_iters``) come from the PNGs through networks rebuilt from the checkpoints
named in the run's config. Reading the same files therefore gives the same numbers, whether
called at the end of a run (:func:`~diffice.report.finalize.finalize_run`) or later
(``diffice evaluate``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from diffice.metrics import (
    Efficiency,
    OracleQuality,
    SonoSim,
    TargetDistance,
    Validity,
    frechet_distance,
    gaussian_stats,
)
from diffice.metrics.kid import frechet_note, frechet_shown, kernel_distance
from diffice.metrics.stats import mean_interval
from diffice.report.intervals import iteration_intervals, run_intervals
from diffice.report.real_judges import real_intervals, real_metrics
from diffice.report.records import (
    concept_names,
    grey_tensor,
    guide_threshold,
    iter_value,
    iteration_png,
    max_iterations,
    num,
    read_bytes,
)

Features = Callable[[torch.Tensor], torch.Tensor]

# the report's metrics are computed from a run's records on one process (rank zero under DDP): nothing to gather
# (with a DDP process group still up, a syncing compute() would wait for ranks that have finished)
LOCAL = {"sync_on_compute": False}
# The paper's Table 1 / Table 2 columns, in order: key in metrics.json -> column title.
TABLE_COLUMNS = {
    "fid": "FID ↓", "fsd": "FSD ↓", "sonosim": "SonoSim ↑", "mqd": "MQD ↑",
    "bkl": "BKL ↓", "mad": "MAD ↑", "fr": "FR ↑",
}


@dataclass
class EvalNets:
    """Networks for image metrics; each takes (B,1,H,W) in [-1, 1]. Any may be None (metric -> NaN)."""

    fid: Features | None = None          # -> (B, 2048) Inception pool features
    sononet: Features | None = None      # -> (B, F) SonoNet features (FSD, SonoSim)
    oracle: Callable | None = None       # -> dict(concepts=(B,C), qs_o=(B,)), scores in [0, 1]
    concepts: tuple[str, ...] = ()       # names of the oracle's concept columns
    device: str = "cpu"
    note: str = ""                       # e.g. where the SonoNet features come from (goes to the notes)
    fsd_features: str = ""               # that source alone (metrics.json ``fsd_features``; "" unknown)


def load_eval_nets(cfg, *, need_oracle: bool = True, device: str | None = None) -> EvalNets:
    """Rebuild the feature networks (and the oracle) from the checkpoints named in ``cfg.cf``."""
    from diffice.modules.common import load_checkpoint

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    guide = load_checkpoint(cfg.cf.guide_ckpt, "classifier", map_location=device).guide
    from diffice.modules.features import feature_nets

    oracle = None
    if need_oracle or (cfg.features.fsd == "oracle" and not cfg.features.sononet_weights):
        oracle = load_checkpoint(cfg.cf.oracle_ckpt, "oracle", map_location=device).oracle
    feats = feature_nets(cfg, guide=guide, oracle=oracle, need_perceptual=False)
    if hasattr(feats, "to"):
        feats = feats.to(device)
    oracle = oracle if need_oracle else None
    source = getattr(feats, "sononet_source", "")
    note = f"FSD and SonoSim use features from: {source}" if source else ""
    if source and "official" not in source:
        note += " (not the official SonoNet: not comparable with other projects' FSD / SonoSim)"
    note += f"; perceptual loss network: {cfg.features.perceptual}"
    return EvalNets(fid=feats.fid, sononet=feats.sononet, oracle=oracle,
                    concepts=tuple(cfg.data.concepts), device=device, note=note, fsd_features=source)


def _f(x) -> float | None:
    """Tensor/number -> float, NaN -> None (JSON has no NaN)."""
    v = float(x)
    return None if math.isnan(v) else v


def _efficiency(records: list[dict], batch_size: int, notes: list[str]) -> dict:
    eff = Efficiency(**LOCAL)
    if all(r.get("batch_id") is not None and r.get("batch_seconds") is not None for r in records):
        groups: dict[str, list[dict]] = {}
        for r in records:
            groups.setdefault(str(r["batch_id"]), []).append(r)
    else:
        # fall back: the frame's "seconds" is its share of its batch's time; consecutive frames
        # in groups of cf.batch_size stand in for the batches.
        notes.append(f"batch time estimated from per-frame seconds in groups of cf.batch_size={batch_size} "
                     "(records carry no batch_id/batch_seconds)")
        groups = {str(i): records[i:i + batch_size] for i in range(0, len(records), max(1, batch_size))}
    for group in groups.values():
        if group[0].get("batch_seconds") is not None and group[0].get("batch_id") is not None:
            seconds = num(group[0]["batch_seconds"])
        else:
            seconds = float(np.nansum([num(r["seconds"]) for r in group]))
        peaks = [num(r.get("peak_memory_bytes")) for r in group if r.get("peak_memory_bytes") is not None]
        eff.update(seconds, frames=len(group), nfe=int(sum(int(r["nfe"] or 0) for r in group)),
                   peak_bytes=max(peaks) if peaks else None)
    out = {k: _f(v) for k, v in eff.compute().items()}
    if out["peak_memory_gb"] is None:
        notes.append("peak memory not recorded (records carry no peak_memory_bytes)")
    out["nfe"] = int(out["nfe"] or 0)
    out["n_batches"] = int(out["n_batches"] or 0)
    return out


def _concept_matrix(records: list[dict], key: str, names: list[str]) -> torch.Tensor:
    return torch.tensor([[num((r.get(key) or {}).get(c)) for c in names] for r in records], dtype=torch.float64)


class _ImageMetrics:
    """FID / FSD (shown from ``FRECHET_MIN_N`` frames a side), KID on the same two feature networks,
    and SonoSim (with its per-pair values for an interval) for one set of counterfactuals.

    They take features (computed once per image file by :class:`_FeatureCache`), not images.
    FID / FSD / KID compare all inputs with the valid (flipped) counterfactuals; SonoSim all pairs.
    """

    def __init__(self, nets: EvalNets):
        self.nets = {key: [[], []] for key, fn in (("fid", nets.fid), ("sononet", nets.sononet)) if fn is not None}
        self.sim = SonoSim(**LOCAL) if nets.sononet is not None else None
        self.cos: list[float] = []  # per-pair cosines (SonoSim's terms), for its interval
        # frames with a clean ground-truth target (real-data benchmarks): targets, their inputs, their outputs
        self.with_target = {key: [[], [], []] for key in self.nets}

    def update(self, x: dict, xc: dict, valid: torch.Tensor, target: dict | None = None,
               has_target: torch.Tensor | None = None) -> None:
        """``x``, ``xc``: dicts of features {"fid": (B, D), "sononet": (B, F)} of inputs and outputs;
        ``target``: features of the ground-truth targets of the frames ``has_target`` marks."""
        keep = torch.as_tensor(valid, dtype=torch.bool)
        for key, (real, fake) in self.nets.items():
            real.append(x[key])
            fake.append(xc[key][keep])
            if target is not None and has_target is not None and bool(has_target.any()):
                t, i, c = self.with_target[key]
                t.append(target[key])
                i.append(x[key][has_target])
                c.append(xc[key][has_target])
        if self.sim is not None:
            cos = self.sim.pair_cosines(x["sononet"], xc["sononet"])
            self.sim.update_cosines(cos)
            self.cos += cos.tolist()

    def compute(self, notes: list[str], label: str) -> dict:
        out: dict = dict(NO_IMAGE_METRICS)
        for key, fd_key, kid_key, name in (("fid", "fid", "kid", "FID"), ("sononet", "fsd", "kid_fsd", "FSD")):
            if key not in self.nets:
                continue
            real, fake = (torch.cat(v).numpy() if v else np.zeros((0, 1)) for v in self.nets[key])
            out[f"{fd_key}_n"] = [len(real), len(fake)]
            k = kernel_distance(real, fake)
            out[kid_key], out[f"{kid_key}_std"] = k["kid"], k["kid_std"]
            if k["kid"] is None:
                notes.append(f"{label}{name} / KID: needs at least 2 inputs and 2 valid counterfactuals, "
                             f"got {len(real)} and {len(fake)}; reported as null")
            elif not frechet_shown(len(real), len(fake)):
                notes.append(label + frechet_note(name, len(real), len(fake)))
            else:
                out[fd_key] = _f(frechet_distance(*gaussian_stats(real), *gaussian_stats(fake)))
            t, i, c = (torch.cat(v).numpy() if v else np.zeros((0, 1)) for v in self.with_target[key])
            if len(t) >= 2:  # against the clean targets: is the counterfactual nearer real clean frames than its input?
                for side, feats in (("input", i), ("cf", c)):
                    k = kernel_distance(t, feats)
                    out[f"{kid_key}_target_{side}"], out[f"{kid_key}_target_{side}_std"] = k["kid"], k["kid_std"]
                out[f"{kid_key}_target_n"] = len(t)
        out["sonosim"] = _f(self.sim.compute()) if self.sim is not None else None
        return out

    def intervals(self) -> dict:
        """SonoSim's interval (bootstrap over the pairs), when SonoSim was computed."""
        return {"sonosim": mean_interval(self.cos)} if self.cos else {}


# the image metrics' keys when no feature network is available
NO_IMAGE_METRICS = {"fid": None, "fsd": None, "kid": None, "kid_std": None, "kid_fsd": None, "kid_fsd_std": None,
                    "sonosim": None}


class _FeatureCache:
    """Features of PNG files, computed once per distinct file content (cf.png usually equals iterL.png)."""

    def __init__(self, nets: EvalNets):
        self.nets = nets
        self.device = torch.device(nets.device)
        self.cache: dict[str, dict[str, torch.Tensor]] = {}

    def __call__(self, paths: list) -> dict[str, torch.Tensor]:
        import hashlib

        keys = [hashlib.sha1(read_bytes(p)).hexdigest() for p in paths]
        todo = sorted({k: p for k, p in zip(keys, paths) if k not in self.cache}.items())
        if todo:
            x = torch.stack([grey_tensor(p) for _, p in todo]).to(self.device)
            with torch.no_grad():
                feats = {name: fn(x).detach().double().cpu().reshape(len(x), -1)
                         for name, fn in (("fid", self.nets.fid), ("sononet", self.nets.sononet)) if fn is not None}
            for i, (k, _) in enumerate(todo):
                self.cache[k] = {name: f[i] for name, f in feats.items()}
        names = self.cache[keys[0]].keys() if keys else ()
        return {name: torch.stack([self.cache[k][name] for k in keys]) for name in names}

    def clear(self) -> None:
        self.cache.clear()


def compute_metrics(records: list[dict], *, nets: EvalNets | None, batch_size: int = 10,
                    concepts=(), chunk: int = 32, progress: bool = True) -> dict:
    """The metrics dict written to ``metrics.json`` (see docs/metrics.md for every key).

    ``nets=None`` skips the image metrics (FID, FSD, SonoSim -> null, with a note); ``concepts``
    orders the per-concept columns (cfg.data.concepts; others follow in record order).
    """
    with warnings.catch_warnings():
        # metrics left empty on purpose (e.g. no oracle) compute NaN; torchmetrics warns about that
        warnings.filterwarnings("ignore", message=r"The ``compute`` method of metric", category=UserWarning)
        return _compute_metrics(records, nets, batch_size, concept_names(records, concepts), chunk, progress)


def _compute_metrics(records: list[dict], nets: EvalNets | None, batch_size: int, names: list[str], chunk: int,
                     progress: bool) -> dict:
    notes: list[str] = []
    n_iter = max_iterations(records)
    p_in = [num(r["p_input"]) for r in records]
    q_in = [num(r["qs_input"]) for r in records]
    c_in = _concept_matrix(records, "concepts_input", names)

    # ---- final counterfactual: validity, oracle, target (records)
    threshold = guide_threshold(records)
    val = Validity(threshold=threshold, **LOCAL)
    val.update(p_in, [num(r["p_cf"]) for r in records])
    orc = OracleQuality(num_concepts=len(names), **LOCAL)
    orc.update(q_in, [num(r["qs_cf"]) for r in records], c_in, _concept_matrix(records, "concepts_cf", names))
    tgt = TargetDistance(**LOCAL)
    tgt.update([num(r["target_l1_input"]) for r in records], [num(r["target_l1_cf"]) for r in records])

    # ---- per-iteration validity and oracle, from records where they carry the scores
    iters = list(range(1, n_iter + 1)) if n_iter > 1 else []
    it_val = {k: Validity(threshold=threshold, **LOCAL) for k in iters}
    it_orc = {k: OracleQuality(num_concepts=len(names), **LOCAL) for k in iters}
    need_oracle_images = bool(iters) and not all(r.get("qs_iters") for r in records)
    for k in iters:
        it_val[k].update(p_in, [iter_value(r.get("p_iters"), k) for r in records])
        if not need_oracle_images:
            cc = torch.tensor([[num((iter_value_dict(r.get("concepts_iters"), k)).get(c)) for c in names]
                               for r in records], dtype=torch.float64)
            it_orc[k].update(q_in, [iter_value(r.get("qs_iters"), k) for r in records], c_in, cc)

    # ---- image metrics (PNGs through the feature nets)
    final_img = _ImageMetrics(nets) if nets is not None else None
    it_img = {k: _ImageMetrics(nets) for k in iters} if nets is not None else {}
    use_oracle = nets is not None and nets.oracle is not None and need_oracle_images
    if nets is None:
        notes.append("image metrics (FID, FSD, SonoSim) skipped: no feature networks")
    elif nets.note:
        notes.append(nets.note)
    if need_oracle_images and not use_oracle:
        notes.append("per-iteration MQD unavailable: records carry no qs_iters and no oracle was loaded")
    if nets is not None:
        _image_pass(records, nets, final_img, it_img, it_orc if use_oracle else {}, names, q_in, c_in, chunk, progress)

    out: dict = {"method": records[0]["method"], "n_frames": len(records), "iterations": n_iter}
    out.update(final_img.compute(notes, "") if final_img is not None else NO_IMAGE_METRICS)
    out["fsd_features"] = (nets.fsd_features or None) if nets is not None else None  # marks a KID off SonoNet's
    o, v = orc.compute(), val.compute()
    out.update(mqd=_f(o["mqd"]), bkl=_f(v["bkl"]), mad=_f(v["mad"]), fr=_f(v["fr"]), mqd_selected=_f(o["mqd_selected"]))
    out["qd"] = {c: _f(q) for c, q in zip(names, o["qd_concepts"])}
    out["n_nsp_guide"] = int(v["n_nsp"])
    out["n_oracle_selected"] = int(o["n_selected"])
    out["n_flipped"] = int(sum(bool(r["flipped"]) for r in records))
    out.update(_efficiency(records, batch_size, notes))
    t = tgt.compute()
    out.update(target_l1_input=_f(t["target_l1_input"]), target_l1_cf=_f(t["target_l1_cf"]),
               n_closer_to_target=int(t["n_closer"]), n_target=int(t["n_target"]))
    sec = TargetDistance(**LOCAL)
    sec.update([num(r.get("target_sector_l1_input")) for r in records], [num(r.get("target_sector_l1_cf")) for r in records])
    ts = sec.compute()
    out.update(target_sector_l1_input=_f(ts["target_l1_input"]), target_sector_l1_cf=_f(ts["target_l1_cf"]),
               n_closer_sector=int(ts["n_closer"]), n_target_sector=int(ts["n_target"]))
    # does the anatomy stay? the guide's segmentation Dice between input and counterfactual, mean over frames
    structures = sorted({k for r in records for k in (r.get("anatomy_dice") or {})})
    out["anatomy_dice"] = {k: _f(np.mean(vals)) if (vals := [num(r["anatomy_dice"][k]) for r in records
                                                              if (r.get("anatomy_dice") or {}).get(k) is not None]) else None
                           for k in structures}
    flags = [r.get("adversarial") for r in records if r.get("adversarial") is not None]
    out["n_adversarial"] = int(sum(bool(f) for f in flags)) if flags else None
    out["adversarial_fraction"] = _f(np.mean([bool(f) for f in flags])) if flags else None
    out["hf_threshold"] = next((num(r["hf_threshold"]) for r in records if r.get("hf_threshold") is not None), None)
    # the guide calls the counterfactual SP but the independent oracle does not
    out["n_guide_oracle_disagree"] = int(sum(bool(r["flipped"]) and num(r["qs_cf"]) < 0.5 for r in records))
    if int(v["n_nsp"]) == 0:
        notes.append(f"no input is classified NSP by the guide (p_input <= {threshold:g}): FR, MAD, BKL are null")
    if int(o["n_valid"]) == 0:
        notes.append("no input has finite oracle scores: MQD and the per-concept QD are null")
    elif int(o["n_selected"]) == 0:
        notes.append("no input has oracle QS_O(x) < 0.5: MQD is 0 and the per-concept QD null")

    per_iter = []
    for k in iters:
        row = {"iteration": k}
        row.update(it_img[k].compute(notes, f"iteration {k}: ") if k in it_img else NO_IMAGE_METRICS)
        ok, vk = it_orc[k].compute(), it_val[k].compute()
        row.update(mqd=_f(ok["mqd"]), bkl=_f(vk["bkl"]), mad=_f(vk["mad"]), fr=_f(vk["fr"]),
                   mqd_selected=_f(ok["mqd_selected"]))
        row["qd"] = {c: _f(q) for c, q in zip(names, ok["qd_concepts"])}
        secs = [iter_value(r.get("seconds_iters"), k) if k <= len(r.get("seconds_iters") or []) else float("nan")
                for r in records]
        row["frames_running"] = int(sum(k <= int(r.get("iterations") or 0) for r in records))
        row["iteration_hours"] = _f(np.nansum(secs) / 3600.0) if np.isfinite(secs).any() else None
        row.update(_iteration_batch_seconds(records, k))
        row["intervals"] = {**iteration_intervals(records, k), **(it_img[k].intervals() if k in it_img else {})}
        per_iter.append(row)
    out["per_iteration"] = per_iter
    real = real_intervals(records)
    out.update(real_metrics(real))
    out["intervals"] = {**run_intervals(records, names), **real, **(final_img.intervals() if final_img is not None else {})}
    out["intervals_note"] = ("95 % intervals: rates Clopper-Pearson, means a percentile bootstrap over frames "
                             "(2000 resamples, seed 0); KID: mean and std over 100 seeded subsets of half the "
                             "smaller set")
    out["notes"] = notes
    return out


def _iteration_batch_seconds(records: list[dict], k: int) -> dict:
    """Mean ± std over batches of pass k's time (sum of its frames' ``seconds_iters`` shares)."""
    groups: dict[str, float] = {}
    for r in records:
        secs = r.get("seconds_iters") or []
        if r.get("batch_id") is None or k > len(secs):
            continue
        groups[str(r["batch_id"])] = groups.get(str(r["batch_id"]), 0.0) + num(secs[k - 1])
    if not groups:
        return {"batch_seconds_mean": None, "batch_seconds_std": None}
    eff = Efficiency(**LOCAL)
    for seconds in groups.values():
        eff.update(seconds)
    e = eff.compute()
    return {"batch_seconds_mean": _f(e["batch_seconds_mean"]), "batch_seconds_std": _f(e["batch_seconds_std"])}


def iter_value_dict(values: list | None, k: int) -> dict:
    if not values:
        return {}
    return values[min(k, len(values)) - 1] or {}


def _image_pass(records, nets: EvalNets, final_img, it_img, it_orc, names, q_in, c_in, chunk, progress) -> None:
    """One pass over the PNGs in chunks: inputs, counterfactuals and every iteration's output."""
    from diffice.progress import Bar

    dev = torch.device(nets.device)
    features = _FeatureCache(nets)
    iters = sorted(it_img)
    threshold = guide_threshold(records)  # the run's guide, as the record-based validity above uses it
    with Bar("image metrics", len(records), enabled=progress) as bar:
        for start in range(0, len(records), chunk):
            part = records[start:start + chunk]
            x = features([r["_dir"] / "input.png" for r in part])
            has_t = torch.tensor([(r["_dir"] / "target.png").is_file() for r in part])
            tgt = features([r["_dir"] / "target.png" for r, h in zip(part, has_t) if h]) if bool(has_t.any()) else None
            final_img.update(x, features([r["_dir"] / "cf.png" for r in part]),
                             torch.tensor([bool(r["flipped"]) for r in part]), tgt, has_t)
            for k in iters:
                paths = [iteration_png(r, k) for r in part]
                valid = torch.tensor([iter_value(r.get("p_iters"), k) > threshold for r in part])
                it_img[k].update(x, features(paths), valid)
                if k in it_orc:
                    xk = torch.stack([grey_tensor(p) for p in paths]).to(dev)
                    with torch.no_grad():
                        o = nets.oracle(xk)
                    cols = [list(nets.concepts).index(c) if c in nets.concepts else None for c in names]
                    conc = o["concepts"].double().cpu()
                    nan = torch.full((len(part),), float("nan"), dtype=torch.float64)
                    cc = (torch.stack([conc[:, i] if i is not None else nan for i in cols], 1) if cols
                          else torch.zeros(len(part), 0, dtype=torch.float64))
                    it_orc[k].update(q_in[start:start + chunk], o["qs_o"].double().cpu(), c_in[start:start + chunk], cc)
            features.clear()
            bar.advance(len(part))


def run_concepts(cfg) -> tuple[str, ...]:
    try:
        return tuple(cfg.data.concepts)
    except Exception:  # noqa: BLE001 - a config without data.concepts
        return ()


def run_batch_size(cfg) -> int:
    try:
        return int(cfg.cf.batch_size)
    except Exception:  # noqa: BLE001 - a config without cf.batch_size
        return 1
