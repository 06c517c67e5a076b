"""``kind: synthesis`` experiments (``experiments/synthesis_ablation.yaml``, ``anomaly_fidelity.yaml``):
every row trains the synthesis model its ``synthesis.ckpt`` names when that file is missing (into
that folder), runs the test layouts and edits into ``{paths.runs}/experiments/NAME/ROW``, and the
rows make one table (:func:`diffice.synthesis.tables.synthesis_table`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def auto_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synthesize_test(cfg: DictConfig, ckpt: str | Path, out: Path, *, edits_only: bool = False, realism: bool = True,
                    report: bool = True, wait: bool = False, quiet: bool = False) -> dict:
    """``diffice synthesize --test``: the split's layouts and their edits into ``out``, with metrics
    (printed unless ``quiet``); its metrics.json."""
    from diffice.synthesis.run import run_test
    from diffice.synthesis.summary import summary_lines

    m, classes = run_test(cfg, str(ckpt), out, auto_device(), edits_only=edits_only, realism=realism, report=report,
                          wait=wait)
    if not quiet:
        for line in summary_lines(m, classes, out, report):
            print(line)
    return m


def run_row(exp, row) -> dict:
    import json

    from diffice.config import save_config
    from diffice.errors import UserError
    from diffice.experiments.spec import slug
    from diffice.modules.common import LAST
    from diffice.modules.synthesis import train_synthesis

    cfg = row.cfg
    ckpt = Path(cfg.synthesis.ckpt)
    if not ckpt.is_file():
        if ckpt.name != LAST or ckpt.parent.parent.resolve() != Path(cfg.paths.runs).resolve():
            raise UserError(f"{ckpt}: not found, and not a {{paths.runs}}/<folder>/{LAST} this experiment could train")
        print(f"[{exp.name}] {row.label}: training {ckpt.parent}")
        train_synthesis(cfg, stage=ckpt.parent.name)
    s = cfg.synthesis
    print(f"[{exp.name}] {row.label}: prealign {s.prealign}, two-stage {s.two_stage}, RePaint {s.repaint}, {s.limit} layouts x {s.count}")
    row.out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, row.out.parent / f".{slug(row.label)}.yaml")  # the row's resolved config, beside its folder
    synthesize_test(cfg, ckpt, row.out, wait=exp.wait, realism=bool(exp.options.get("realism", True)),
                    edits_only=bool(exp.options.get("edits_only")))
    return json.loads((row.out / "metrics.json").read_text())


def table(exp, results) -> str:
    from diffice.synthesis.tables import synthesis_table

    return synthesis_table([(row.label, m) for row, m in results])
