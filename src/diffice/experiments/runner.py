"""The one runner of ``experiments/*.yaml``: every row's config resolved once at the start, the
models a kind needs trained (or resumed, or taken from ``--pack``), each row run through its kind
(resumable: a rerun skips what is finished), and ``{paths.runs}/experiments/NAME/table.md``.

A kind (``kind:`` in the file; :data:`KINDS`) says which config layer it adds per preset, the key
of a row's output folder, whether the four models are trained first, how a row runs and how the
rows make a table. A new kind is one more entry (see ``docs/architecture.md``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from diffice.errors import UserError
from diffice.experiments.spec import pipeline_group, preset_file, read_experiment, row_layer, slug, tau_scale


@dataclass
class Row:
    label: str
    cfg: DictConfig          # resolved when the experiment starts; a row runs on a copy of it
    out: Path                # {paths.runs}/experiments/NAME/<slug of the label>


@dataclass
class Experiment:
    path: str                # the experiment file, as given
    name: str
    kind: Kind
    preset: str              # --preset as given
    preset_file: str
    args: list[str]          # extra config files and key=value words, as given
    base: dict               # the file's config keys shared by every row
    options: dict            # description, paired, realism, ...
    overrides: list[str]     # key=value words of every row (W&B group and pack files added)
    out_root: Path
    rows: list[Row] = field(default_factory=list)
    train_cfg: DictConfig | None = None   # the models trained before the rows (None: none, or --pack)
    pack: str | None = None              # --pack as given
    selected: list[str] | None = None     # --row
    wait: bool = False


@dataclass(frozen=True)
class Kind:
    name: str
    run: Callable[[Experiment, Row], Any]                       # a row's result (e.g. its metrics.json)
    table: Callable[[Experiment, list[tuple[Row, Any]]], str]   # the markdown under the table's title
    out_key: str | None = None           # the config key of a row's output folder
    trains_models: bool = True           # the four models first (unless --pack)
    takes_pack: bool = True              # --pack points the rows at a model pack
    per_preset: bool = False             # the file's presets: {NAME: keys} block joins every row
    maps_tau: bool = False               # tau given on the file's tau_scale-step schedule


def _kinds() -> dict[str, Kind]:
    from diffice.experiments import counterfactual, downstream, seg_downstream, synthesis

    return {
        "counterfactuals": Kind("counterfactuals", counterfactual.run_row, counterfactual.table, out_key="cf.out", maps_tau=True),
        "synthesis": Kind("synthesis", synthesis.run_row, synthesis.table, out_key="synthesis.out"),
        "downstream": Kind("downstream", downstream.run_row, downstream.table, trains_models=False, takes_pack=False,
                           per_preset=True),
        "segmentation_downstream": Kind("segmentation_downstream", seg_downstream.run_row, seg_downstream.table,
                                        trains_models=False, takes_pack=False, per_preset=True),
    }


def plan(path: str | Path, *, preset: str = "tiny", args: Sequence[str] = (), rows: Sequence[str] | None = None,
         pack: str | None = None, wait: bool = False) -> Experiment:
    """Read the experiment file and resolve every row's config (nothing is trained or written)."""
    from diffice.config import load_config, split_args

    base, runs, options = read_experiment(path)
    if rows:
        unknown = [r for r in rows if r not in runs]
        if unknown:
            raise UserError(f"{path}: no row '{unknown[0]}' (rows: {', '.join(runs)})")
        runs = {k: v for k, v in runs.items() if k in rows}
        options["paired"] = [p for p in options.get("paired") or [] if all(str(x) in runs for x in p)]
    kind = _kinds()[options.get("kind", "counterfactuals")]
    scale = tau_scale(options.get("tau_scale"), preset, path) if kind.maps_tau else None  # checked before any training
    name = str(options.get("name") or Path(path).stem)
    files, overrides = split_args(list(args))
    pfile = preset_file(preset)
    if not (base.get("wandb") or {}).get("group"):
        overrides = pipeline_group([pfile, *files, *overrides], f"experiment-{name}")[1 + len(files):]
    train_cfg = None
    packed: dict = {}  # the pack's checkpoints: a layer under the file's, so a row naming its own model keeps it
    if kind.takes_pack and pack:
        from omegaconf import OmegaConf

        from diffice.experiments.pack import pack_words

        packed = OmegaConf.to_container(OmegaConf.from_dotlist(pack_words(Path(pack))))
    elif kind.trains_models:
        train_cfg = load_config([pfile, *files], overrides)
    block = ((options.get("presets") or {}).get(Path(pfile).stem) or {}) if kind.per_preset else {}
    layers = [packed, base, block] if kind.per_preset else [packed, base]
    out_root = Path(load_config([pfile, *layers, *files], overrides).paths.runs) / "experiments" / name
    exp = Experiment(str(path), name, kind, preset, pfile, list(args), base, options, overrides, out_root,
                     train_cfg=train_cfg, pack=pack, selected=list(rows) if rows else None,
                     wait=wait)
    for label, layer in runs.items():
        out = out_root / slug(label)
        lay = row_layer(layer, base, scale, [pfile, *files], overrides)
        cfg = load_config([pfile, *layers, lay, *files], [*overrides, *([f"{kind.out_key}={out}"] if kind.out_key else [])])
        exp.rows.append(Row(label, cfg, out))
    return exp


def run_experiment(exp: Experiment) -> Path:
    """Train what the rows need, run every row, write ``table.md``; returns its path."""
    if exp.train_cfg is not None:
        from diffice.experiments.stages import train_models

        train_models(exp.train_cfg)
    from diffice.runlock import other_rank

    results = [(row, exp.kind.run(exp, Row(row.label, copy.deepcopy(row.cfg), row.out))) for row in exp.rows]
    if other_rank():  # DDP: the other processes computed their share of every row; rank zero writes the table
        return exp.out_root / "table.md"
    return write_experiment_table(exp, exp.kind.table(exp, results))


def write_experiment_table(exp: Experiment, body: str) -> Path:
    """``{out_root}/table.md``: title, description, the command that made it, then ``body``."""
    from diffice.io import atomic_write_text

    head = [f"# {exp.name}", "", str(exp.options.get("description", "")).strip(), "",
            f"Preset `{exp.preset}`; command: `diffice experiment {exp.path} --preset {exp.preset}"
            + (f" --pack {exp.pack}" if exp.pack else "")
            + "".join(f" --row '{r}'" for r in exp.selected or [])
            + (" " + " ".join(exp.args) if exp.args else "") + "`", ""]
    table = exp.out_root / "table.md"
    atomic_write_text(table, "\n".join(head) + "\n" + body)
    print(f"[{exp.name}] table: {table}")
    return table
