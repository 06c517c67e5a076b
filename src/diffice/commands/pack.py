"""``diffice demo-models``: train the demo preset's models and write the model pack
(:mod:`diffice.experiments.make_pack`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from diffice.experiments.pack import PACK_DIR, PACK_MAX_MB, PACK_PRESET, PACK_RUNS


def cmd_demo_models(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="diffice demo-models",
        description=f"Train the demo's models with the {PACK_PRESET} preset (resuming, or skipping stages already "
        f"trained in --runs) and write the model pack: fp16 checkpoints of the DDPM (EMA), the guide (with its "
        f"segmenter) and the oracle, and PROVENANCE.json (config, commit, steps, wall time, machine, test metrics).",
    )
    p.add_argument("args", nargs="*", help="extra config files (*.yaml) and key=value overrides")
    p.add_argument("--preset", default=PACK_PRESET, help=f"preset name or file (default {PACK_PRESET})")
    p.add_argument("--runs", default=PACK_RUNS, help=f"run folder of the training stages (default {PACK_RUNS})")
    p.add_argument("--out", default=PACK_DIR, help=f"pack folder (default {PACK_DIR})")
    p.add_argument("--max-mb", type=float, default=PACK_MAX_MB, help=f"refuse a pack larger than this (default {PACK_MAX_MB:g})")
    p.add_argument("--note", default="", help="free text recorded in PROVENANCE.json (e.g. how long stages trained before a resume)")
    p.add_argument("--no-synthesis", action="store_true",
                   help="a counterfactual pack without the synthesis model (e.g. --preset hc18: no layouts to synthesise)")
    p.add_argument("--keep", default=None, metavar="PACK",
                   help="an earlier pack whose files stand in for the stages --runs has no checkpoint of (their "
                   "provenance kept): a campaign that spans sessions replaces one model at a time (may be --out itself)")
    ns = p.parse_intermixed_args(list(argv))

    from diffice.experiments.make_pack import make_pack

    make_pack(ns.args, preset=ns.preset, runs=ns.runs, out=ns.out, max_mb=ns.max_mb, note=ns.note,
              command="diffice demo-models " + " ".join(argv), synthesis=not ns.no_synthesis, keep=ns.keep)
    return 0
