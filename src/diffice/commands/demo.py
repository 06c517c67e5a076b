"""``diffice demo``: Diff-ICE on the built-in phantom, end to end (:mod:`diffice.experiments.demo`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from diffice.experiments.pack import PACK_DIR


def cmd_demo(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="diffice demo",
        description="Diff-ICE on the built-in phantom, end to end. By default with the shipped model pack "
        f"({PACK_DIR}): counterfactuals of the NSP test frames, metrics and a report in a few minutes. "
        "With --scratch, the whole pipeline from nothing with the tiny preset: train the DDPM, segmenter, "
        "guide and oracle first. Interrupt it at any time; a rerun resumes.",
    )
    p.add_argument("args", nargs="*", help="extra config files (*.yaml) and key=value overrides")
    p.add_argument("--scratch", action="store_true", help="train the four models first (tiny preset, ~10 minutes)")
    p.add_argument("--pack", default=PACK_DIR, help=f"model pack folder (default {PACK_DIR})")
    p.add_argument("--preset", default=None, help="preset name or file (default: demo with the pack, tiny with --scratch)")
    p.add_argument("--no-synthesis", action="store_true", help="skip the synthesis page (layouts and edits) after the counterfactuals")
    ns = p.parse_intermixed_args(list(argv))

    from diffice.experiments.demo import run_demo

    return run_demo(ns.args, scratch=ns.scratch, pack=ns.pack, preset=ns.preset, synthesis=not ns.no_synthesis)
