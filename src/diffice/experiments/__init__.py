"""Experiments: the layer between the engines (counterfactual, synthesis, downstream, report) and
the commands. The commands parse arguments and call into it.

    spec        experiment files (experiments/*.yaml), preset files, row folders, W&B groups, tau mapping
    runner      the one runner: rows resolved at the start, models trained, rows run by kind, table.md
    counterfactual, synthesis, downstream, seg_downstream
                the kinds of experiment (a row's run and the table of the rows), and the pipelines
                the commands share: a counterfactual run with its report, a synthesis test run
    stages      the four models (and the synthesis model) trained, resumed or skipped
    demo        the demo (model pack or --scratch)
    pack, make_pack
                using the model pack (config words, summary, fallback) and making it (demo-models)
"""

from diffice.experiments.runner import Experiment, Row, plan, run_experiment

__all__ = ["Experiment", "Row", "plan", "run_experiment"]
