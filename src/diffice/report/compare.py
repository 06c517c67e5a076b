"""Two counterfactual runs on the same frames, compared frame by frame (``diffice compare``).

Guided vs its λc = 0 control, one method vs another, a setting vs another: the frames both runs
hold (matched by dataset index, and checked to be the same frames by id) give **paired**
outcomes, so the comparison does not depend on which frames happened to be hard:

- yes/no outcomes (flipped, closer to the target in the fault's footprint / over the sector,
  adversarial texture, oracle quality up): how many frames each run got, how many only A and
  only B got, and the exact McNemar p-value (a two-sided binomial test on the discordant frames);
- numbers (guide probability, oracle quality, distances to the target, anatomy Dice): the mean
  of B − A with a bootstrap 95 % interval and the Wilcoxon signed-rank p-value.

Rows are over the frames where the outcome is defined in both runs (flips: inputs the guide calls
NSP in both; target distances: frames with a ground truth). ``n`` says how many.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from diffice.errors import UserError
from diffice.metrics.stats import fmt_interval, fmt_p, mcnemar, paired_difference
from diffice.report.records import guide_threshold, load_records, num


def _pairs(run_a, run_b) -> tuple[list[tuple[dict, dict]], list[str]]:
    recs_a = {int(r["index"]): r for r in load_records(run_a)}
    recs_b = {int(r["index"]): r for r in load_records(run_b)}
    common = sorted(set(recs_a) & set(recs_b))
    if not common:
        raise UserError(f"{run_b}: holds none of the frames of {run_a} (no dataset index in common); "
                        "compare two runs on the same data and split")
    for i in common:
        if str(recs_a[i]["id"]) != str(recs_b[i]["id"]):
            raise UserError(f"{run_b}: frame {i} is '{recs_b[i]['id']}' but '{recs_a[i]['id']}' in {run_a}; "
                            "the runs are not on the same data set")
    notes = []
    if len(common) < max(len(recs_a), len(recs_b)):
        notes.append(f"compared on the {len(common)} frames both runs hold ({len(recs_a)} in A, {len(recs_b)} in B)")
    if any(abs(num(recs_a[i]["p_input"]) - num(recs_b[i]["p_input"])) > 1e-6 for i in common):
        notes.append("the runs' guides score the inputs differently (other guide checkpoints?): "
                     "flips are counted over inputs both call NSP")
    return [(recs_a[i], recs_b[i]) for i in common], notes


def _binary(pairs, name: str, defined, outcome) -> dict | None:
    rows = [(outcome(a), outcome(b)) for a, b in pairs if defined(a) and defined(b)]
    if not rows:
        return None
    res = mcnemar([x for x, _ in rows], [y for _, y in rows])
    res["outcome"] = name
    return res


def _number(pairs, name: str, value) -> dict | None:
    xs = [value(a) for a, _ in pairs]
    ys = [value(b) for _, b in pairs]
    if not any(math.isfinite(x) and math.isfinite(y) for x, y in zip(xs, ys)):
        return None
    res = paired_difference(xs, ys)
    res["quantity"] = name
    return res


def _finite(*keys):
    return lambda r: all(math.isfinite(num(r.get(k))) for k in keys)


def compare_runs(run_a, run_b, group: str | None = None) -> dict:
    """Paired outcomes of two runs; see the module docstring. ``group``: a regular expression whose
    first group, searched in each frame's id, names the frame's group (e.g. ``_([a-z]+)$``, the fault of
    an hc18-faults frame); the result then also holds ``groups``: the yes/no outcomes per group."""
    pairs, notes = _pairs(run_a, run_b)
    res = _compare_pairs(pairs, notes)
    res.update({"a": str(run_a), "b": str(run_b)})
    if group:
        import re

        try:
            rx = re.compile(group)
        except re.error as err:
            raise UserError(f"--by {group!r}: not a regular expression ({err})") from None
        named: dict[str, list] = {}
        for a, b in pairs:
            m = rx.search(str(a["id"]))
            named.setdefault(m.group(1) if m and m.groups() else "(no match)", []).append((a, b))
        res["groups"] = {k: _compare_pairs(v, [])["binary"] for k, v in sorted(named.items())}
        res["group_sizes"] = {k: len(v) for k, v in sorted(named.items())}
    return res


def _compare_pairs(pairs, notes) -> dict:
    nsp = lambda r: num(r["p_input"]) <= guide_threshold([r])  # noqa: E731  (each run's own guide)
    binary = [
        _binary(pairs, "flipped (guide calls the cf SP)", nsp, lambda r: num(r["p_cf"]) > guide_threshold([r])),
        _binary(pairs, "closer to the target (footprint)", _finite("target_l1_input", "target_l1_cf"),
                lambda r: num(r["target_l1_cf"]) < num(r["target_l1_input"])),
        _binary(pairs, "closer to the target (sector)", _finite("target_sector_l1_input", "target_sector_l1_cf"),
                lambda r: num(r["target_sector_l1_cf"]) < num(r["target_sector_l1_input"])),
        _binary(pairs, "oracle quality up (QS_O(x_c) > QS_O(x))", _finite("qs_input", "qs_cf"),
                lambda r: num(r["qs_cf"]) > num(r["qs_input"])),
        _binary(pairs, "adversarial texture flagged", lambda r: r.get("adversarial") is not None,
                lambda r: bool(r["adversarial"])),
        # real frames: the authors' SonoNet-16 (diffice.report.real_judges)
        _binary(pairs, "SonoNet-16 calls the cf a brain plane", lambda r: r.get("brain_cf") is not None,
                lambda r: bool(r["brain_cf"])),
        _binary(pairs, "SonoNet-16 calls the cf a brain plane (inputs it does not)",
                lambda r: r.get("brain_input") is False and r.get("brain_cf") is not None, lambda r: bool(r["brain_cf"])),
    ]
    numbers = [
        _number(pairs, "guide p(x_c)", lambda r: num(r["p_cf"])),
        _number(pairs, "oracle QS_O(x_c)", lambda r: num(r["qs_cf"])),
        _number(pairs, "L1 to target: cf (footprint)", lambda r: num(r.get("target_l1_cf"))),
        _number(pairs, "L1 to target: cf (sector)", lambda r: num(r.get("target_sector_l1_cf"))),
        _number(pairs, "SonoNet-16 brain-plane probability of the cf", lambda r: num(r.get("p_brain_cf"))),
        _number(pairs, "HC error of the cf vs the target (relative)",
                lambda r: abs(num(r.get("hc_cf_mm")) - num(r.get("hc_target_mm"))) / num(r.get("hc_target_mm"))),
        _number(pairs, "squared change inside the fault's footprint", lambda r: num((r.get("change") or {}).get("in_footprint"))),
    ]
    structures = sorted({k for a, b in pairs for k in (a.get("anatomy_dice") or {}) if k in (b.get("anatomy_dice") or {})})
    numbers += [_number(pairs, f"Dice {k} (input vs cf)", lambda r, k=k: num((r.get("anatomy_dice") or {}).get(k)))
                for k in structures]
    method = lambda r: str(r.get("method", "?"))  # noqa: E731
    return {"method_a": method(pairs[0][0]), "method_b": method(pairs[0][1]),
            "n_frames": len(pairs), "binary": [b for b in binary if b], "numbers": [x for x in numbers if x],
            "notes": notes}


def compare_markdown(res: dict) -> str:
    lines = [f"**A** = `{res['a']}` ({res['method_a']}), **B** = `{res['b']}` ({res['method_b']}); "
             f"{res['n_frames']} frames in both runs.", "",
             "| outcome | frames | A | B | only A | only B | p (exact McNemar) |", "|---|---|---|---|---|---|---|"]
    for b in res["binary"]:
        lines.append(f"| {b['outcome']} | {b['n']} | {b['a']} ({b['a'] / b['n']:.2f}) | {b['b']} ({b['b'] / b['n']:.2f}) "
                     f"| {b['a_only']} | {b['b_only']} | {fmt_p(b['p_value'])} |")
    lines += ["", "| quantity | frames | mean A | mean B | B − A [95 % CI] | p (Wilcoxon) |", "|---|---|---|---|---|---|"]
    for x in res["numbers"]:
        lines.append(f"| {x['quantity']} | {x['n']} | {x['mean_a']:.3f} | {x['mean_b']:.3f} | {fmt_interval(x, 3)} "
                     f"| {fmt_p(x['p_value'])} |")
    if res.get("groups"):
        lines += ["", "Per group (the frame id's group; yes/no outcomes, exact McNemar within the group):", "",
                  "| group | frames | outcome | n | A | B | only A | only B | p |", "|---|---|---|---|---|---|---|---|---|"]
        for name, rows in res["groups"].items():
            for b in rows:
                lines.append(f"| {name} | {res['group_sizes'][name]} | {b['outcome']} | {b['n']} | {b['a']} | {b['b']} "
                             f"| {b['a_only']} | {b['b_only']} | {fmt_p(b['p_value'])} |")
    if res["notes"]:
        lines += [""] + [f"Note: {n}." for n in res["notes"]]
    lines += ["", "A difference is significant at 95 % where p < 0.05 (one test per row, not corrected for the "
              "number of rows); the interval is a percentile bootstrap over frames (2,000 resamples, seed 0)."]
    return "\n".join(lines) + "\n"


def compare_main(argv: list[str]) -> int:
    import argparse

    from diffice.io import atomic_write_text

    p = argparse.ArgumentParser(prog="diffice compare",
                                description="Compare two counterfactual runs on the same frames: paired outcomes "
                                            "(exact McNemar) and paired differences (bootstrap CI, Wilcoxon).")
    p.add_argument("run_a", help="run folder A (e.g. the lambda_c = 0 control)")
    p.add_argument("run_b", help="run folder B (e.g. the guided run)")
    p.add_argument("--out", type=Path, help="also write the table here (markdown) and beside it the numbers (.json)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--by", metavar="REGEX", help="also compare per group: the first group of REGEX searched in each "
                                                 "frame's id (e.g. '_([a-z]+)$': the fault of an hc18-faults frame)")
    ns = p.parse_args(argv)
    res = compare_runs(ns.run_a, ns.run_b, ns.by)
    text = compare_markdown(res)
    if ns.out:
        atomic_write_text(ns.out, text)
        atomic_write_text(ns.out.with_suffix(".json"), json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2) if ns.json else text)
    return 0
