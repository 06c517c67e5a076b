"""``diffice demo``: Diff-ICE on the built-in phantom, end to end, each stage resumable.

With the model pack (default): the pack's checkpoints, the counterfactuals of the NSP test frames,
metrics and report, then the synthesis page (layouts and edits of test frames). With ``scratch``:
the tiny preset's four models trained first (or resumed, or skipped when finished)::

    phantom data -> train-ddpm -> train-segmenter -> train-classifier -> train-oracle
                 -> counterfactuals -> metrics.json, report.html
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

WEAK_GUIDE = 0.8  # test balanced accuracy under which a flip ratio says little


def judges_summary(runs: Path) -> list[str]:
    """One line on the judges' test quality (from their metrics.json), and a warning when the
    guide is too weak for its flips to mean much."""

    def test_metrics(stage: str) -> dict:
        try:
            return json.loads((runs / stage / "metrics.json").read_text()).get("test") or {}
        except (OSError, ValueError):
            return {}

    seg, guide, oracle = test_metrics("segmenter"), test_metrics("classifier"), test_metrics("oracle")
    parts = []
    if "dice_mean" in seg:
        parts.append(f"segmenter Dice {seg['dice_mean']:.2f}")
    if "balanced_accuracy" in guide:
        parts.append(f"guide balanced accuracy {guide['balanced_accuracy']:.2f} (AUROC {guide.get('auroc', float('nan')):.2f})")
    if "mae_qs_o" in oracle:
        parts.append(f"oracle QS_O MAE {oracle['mae_qs_o']:.2f}")
    lines = ["judges on the test split: " + ", ".join(parts)] if parts else []
    acc = guide.get("balanced_accuracy")
    if acc is not None and acc < WEAK_GUIDE:
        lines.append(f"warning: the guide's test balanced accuracy is {acc:.2f} (< {WEAK_GUIDE}); it calls many NSP "
                     f"frames SP, so the flip ratio means little: train it longer (guide.max_steps)")
    return lines


def redraw_if_changed(out: Path, kind, settings: dict) -> None:
    """The demo's own run folder, drawn by an earlier demo with other settings (an older diffice, other
    arguments), is deleted and drawn again instead of refused; a folder of another kind still is."""
    import shutil

    from diffice.runfolder import read_stamp, settings_difference, stamped_settings

    stamp = read_stamp(out)
    if stamp is None or stamp.get("kind") != kind.name:
        return
    diff = settings_difference(kind, settings, stamped_settings(out, kind, stamp))
    if diff:
        print(f"{out}: an earlier demo made it with other settings ({diff}); drawing it again")
        shutil.rmtree(out)


def run_demo(args: Sequence[str], *, scratch: bool = False, pack: str | Path | None = None, preset: str | None = None,
             synthesis: bool = True) -> int:
    """The demo (see the module docstring); ``args``: extra config files and key=value words."""
    from diffice.config import config_from_args
    from diffice.experiments.counterfactual import counterfactuals
    from diffice.experiments.pack import PACK_DIR, PACK_PRESET, pack_has_synthesis, pack_summary, pack_words
    from diffice.experiments.spec import pipeline_group, preset_file
    from diffice.experiments.stages import train_models

    t0 = time.perf_counter()
    if scratch:
        words = pipeline_group([preset_file(preset or "tiny"), *args], "demo-scratch")
        times = train_models(config_from_args(words))
    else:
        folder = Path(pack or PACK_DIR)
        # the synthesis page: 4 test layouts x 2 samples and two edits of each (about a minute on 2 cores)
        words = pipeline_group([preset_file(preset or PACK_PRESET), "paths.runs=runs/demo", *pack_words(folder),
                                "synthesis.limit=4", "synthesis.count=2", "synthesis.edits=[remove:csp,grow:th:2]", *args], "demo")
        times = {}
        for line in pack_summary(folder):
            print(line)
    print("[counterfactuals] Diff-ICE on the NSP test frames")
    t1 = time.perf_counter()
    if not scratch:
        from diffice.config import to_dict
        from diffice.counterfactual.outputs import RUN_KIND as CF_RUN
        from diffice.counterfactual.outputs import method_config

        c = config_from_args(words)
        redraw_if_changed(Path(c.cf.out), CF_RUN, method_config(to_dict(c)))
    counterfactuals(config_from_args(words))
    times["counterfactuals"] = time.perf_counter() - t1

    cfg = config_from_args(words)
    out = Path(cfg.cf.out)
    syn_report = None
    if not scratch and synthesis and pack_has_synthesis(Path(pack or PACK_DIR)):
        from diffice.experiments.synthesis import synthesize_test

        print("[synthesis] layouts and edits of test frames with the pack's synthesis model")
        t2 = time.perf_counter()
        syn_out = Path(cfg.paths.runs) / "synthesis"
        from diffice.config import to_dict
        from diffice.synthesis.run import RUN_KIND as SYN_RUN
        from diffice.synthesis.run import synthesis_config

        redraw_if_changed(syn_out, SYN_RUN, synthesis_config(to_dict(cfg), str(cfg.synthesis.ckpt)))
        synthesize_test(config_from_args(words), cfg.synthesis.ckpt, syn_out, realism=False)  # FID of 8 samples says nothing
        times["synthesis"] = time.perf_counter() - t2
        syn_report = syn_out / "report.html"
    elif scratch:
        print("[synthesis] not trained by --scratch (it would double the time): "
              "make train-synthesis, then diffice synthesize runs/synthesis/last.ckpt --test")
    if scratch:
        for line in judges_summary(Path(cfg.paths.runs)):
            print(line)
    total = time.perf_counter() - t0
    print("demo stages: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()) + f"; total {total / 60:.1f} min")
    report = out / "report.html"
    print(f"demo finished: open {report if report.exists() else out}"
          + (f" and the synthesis page {syn_report}" if syn_report is not None and syn_report.exists() else ""))
    return 0
