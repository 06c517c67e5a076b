"""``diffice experiment``: run one of the paper's experiments (:mod:`diffice.experiments.runner`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def cmd_experiment(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="diffice experiment",
        description="Run one of the paper's experiments (experiments/*.yaml): resolve every row's config, train "
        "the models if needed, run each row by the file's kind (counterfactuals, synthesis or downstream; a rerun "
        "resumes), and write a markdown table to {paths.runs}/experiments/NAME/table.md.",
    )
    p.add_argument("experiment", help="experiment file, e.g. experiments/table1.yaml")
    p.add_argument("args", nargs="*", help="extra config files (*.yaml) and key=value overrides")
    p.add_argument("--preset", default="tiny", help="preset name or file (default: tiny)")
    p.add_argument("--row", action="append", default=None, metavar="LABEL",
                   help="run only this row (repeatable; the labels under runs:), e.g. to rerun part of a table")
    p.add_argument("--pack", default=None, help="use this model pack's checkpoints (e.g. models/demo with --preset demo) "
                                                 "instead of training the models into paths.runs")
    p.add_argument("--wait", action="store_true", help="wait for another run writing into a row's folder (default: stop)")
    ns = p.parse_intermixed_args(list(argv))

    from diffice.experiments import plan, run_experiment

    run_experiment(plan(ns.experiment, preset=ns.preset, args=ns.args, rows=ns.row, pack=ns.pack, wait=ns.wait))
    return 0
