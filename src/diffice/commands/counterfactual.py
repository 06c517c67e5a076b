"""``diffice counterfactuals`` (:mod:`diffice.experiments.counterfactual`: the engine, then the
report) and the run-folder commands of the report."""

from __future__ import annotations

import argparse


def cmd_counterfactuals(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="diffice counterfactuals",
        description="Generate SP counterfactuals of the selected frames (cf.split, cf.label, cf.limit) "
        "with cf.method (diff-ice | diff-ice1 | diff-ice1-xt | dime) into cf.out, then compute the "
        "metrics and the report. A rerun into the same cf.out skips finished frames.",
    )
    p.add_argument("args", nargs="*", help="config files (*.yaml) and key=value overrides, in order")
    p.add_argument("--no-report", action="store_true", help="only generate; skip metrics.json and report.html")
    p.add_argument("--wait", action="store_true", help="if another run writes into cf.out, wait for it to finish "
                   "(default: stop with a message naming it)")
    ns = p.parse_intermixed_args(argv)

    from diffice.config import config_from_args
    from diffice.experiments.counterfactual import counterfactuals

    counterfactuals(config_from_args(ns.args), wait=ns.wait, report=not ns.no_report)
    return 0


def cmd_evaluate(argv: list[str]) -> int:
    from diffice.report.commands import evaluate_main

    return evaluate_main(argv)


def cmd_compare(argv: list[str]) -> int:
    from diffice.report.compare import compare_main

    return compare_main(argv)


def cmd_reader_study(argv: list[str]) -> int:
    from diffice.report.commands import reader_study_main

    return reader_study_main(argv)


def cmd_reader_score(argv: list[str]) -> int:
    from diffice.report.commands import reader_score_main

    return reader_score_main(argv)
