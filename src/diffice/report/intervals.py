"""95 % intervals of a counterfactual run's rates and means, from its records (per frame).

Each interval is computed from the same per-frame quantities as the metric it belongs to
(``diffice.metrics``), so ``value`` equals the number in ``metrics.json``:

- FR: the flipped share of the inputs the guide calls NSP (p ≤ 0.5) — a rate (Clopper–Pearson);
- MAD, BKL: means over those inputs; MQD: the mean over **all** inputs of each frame's
  1[QS_O(x) < 0.5] · (QS_O(x_c) − QS_O(x)) (the paper's ÷ N), ``mqd_selected`` over the selected
  inputs; per-concept QD likewise — bootstrap over frames;
- closer to the target (footprint, sector) and adversarial flags: rates; distances to the
  target and anatomy Dice: bootstrap means.

See :mod:`diffice.metrics.stats` for the methods.
"""

from __future__ import annotations

import math

from diffice.metrics.stats import mean_interval, rate_interval
from diffice.report.records import guide_threshold, iter_value, num

THRESHOLD = 0.5  # the oracle's: QS_O(x) < 0.5 is low quality (the guide's threshold is the run's own)


def _validity(p_in: list[float], p_cf: list[float], threshold: float = 0.5) -> dict:
    nsp = [(a, b) for a, b in zip(p_in, p_cf) if a <= threshold]
    return {"fr": rate_interval(sum(b > threshold for _, b in nsp), len(nsp)),
            "mad": mean_interval([abs(a - b) for a, b in nsp]),
            "bkl": mean_interval([1.0 - b for _, b in nsp])}


def _oracle(q_in: list[float], q_cf: list[float]) -> dict:
    finite = [math.isfinite(a) and math.isfinite(b) for a, b in zip(q_in, q_cf)]
    sel = [f and a < THRESHOLD for f, a in zip(finite, q_in)]
    contrib = [(b - a) if s else 0.0 for s, a, b in zip(sel, q_in, q_cf)]
    out = {"mqd": mean_interval(contrib) if any(finite) else mean_interval([]),
           "mqd_selected": mean_interval([c for c, s in zip(contrib, sel) if s])}
    return out


def run_intervals(records: list[dict], concepts: list[str]) -> dict:
    """Intervals of the final counterfactuals' rates and means: {key: interval dict}."""
    p_in = [num(r["p_input"]) for r in records]
    q_in = [num(r["qs_input"]) for r in records]
    t = guide_threshold(records)
    out = _validity(p_in, [num(r["p_cf"]) for r in records], t)
    out.update(_oracle(q_in, [num(r["qs_cf"]) for r in records]))
    for c in concepts:
        vals = [num((r.get("concepts_cf") or {}).get(c)) - num((r.get("concepts_input") or {}).get(c))
                for r, q in zip(records, q_in) if math.isfinite(q) and q < THRESHOLD and math.isfinite(num(r["qs_cf"]))]
        out[f"qd_{c}"] = mean_interval(vals)
    for prefix, key_in, key_cf in (("target", "target_l1_input", "target_l1_cf"),
                                   ("sector", "target_sector_l1_input", "target_sector_l1_cf")):
        pairs = [(num(r.get(key_in)), num(r.get(key_cf))) for r in records]
        pairs = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
        name = "closer_to_target" if prefix == "target" else "closer_sector"
        out[name] = rate_interval(sum(b < a for a, b in pairs), len(pairs))
        out[key_in] = mean_interval([a for a, _ in pairs])
        out[key_cf] = mean_interval([b for _, b in pairs])
    flags = [bool(r["adversarial"]) for r in records if r.get("adversarial") is not None]
    out["adversarial_fraction"] = rate_interval(sum(flags), len(flags))
    out["flipped_all"] = rate_interval(sum(bool(r["flipped"]) for r in records), len(records))
    for key in ("in_footprint", "psnr_outside", "changed_fraction"):  # where the change is (metrics.locality)
        vals = [num((r.get("change") or {}).get(key)) for r in records]
        out[f"change_{key}"] = mean_interval([v for v in vals if math.isfinite(v)])
    masks = [num(r.get("sparse_mask_fraction")) for r in records]  # cf.sparse: what the refinement could change
    out["sparse_mask_fraction"] = mean_interval([v for v in masks if math.isfinite(v)])
    dense = [num(r.get("p_dense")) for r in records]
    out["flipped_dense"] = rate_interval(sum(p > t for p in dense if math.isfinite(p)), sum(math.isfinite(p) for p in dense))
    structures = sorted({k for r in records for k in (r.get("anatomy_dice") or {})})
    for k in structures:
        out[f"anatomy_dice_{k}"] = mean_interval([num(r["anatomy_dice"][k]) for r in records
                                                  if (r.get("anatomy_dice") or {}).get(k) is not None])
    return {k: v for k, v in out.items() if v["n"]}


def iteration_intervals(records: list[dict], k: int) -> dict:
    """Intervals of FR, MAD, BKL (and MQD where the records carry ``qs_iters``) after iteration ``k``."""
    p_in = [num(r["p_input"]) for r in records]
    out = _validity(p_in, [iter_value(r.get("p_iters"), k) for r in records], guide_threshold(records))
    if all(r.get("qs_iters") for r in records):
        out.update(_oracle([num(r["qs_input"]) for r in records], [iter_value(r.get("qs_iters"), k) for r in records]))
    return {k: v for k, v in out.items() if v["n"]}

