"""``diffice demo`` (the whole pipeline on phantom data) and ``diffice experiment`` (the paper's tables).

Both run the same stages in order, each resumable: a stage whose checkpoint is complete is
loaded rather than retrained, and counterfactual frames already written are skipped.

    phantom data -> train-ddpm -> train-segmenter -> train-classifier -> train-oracle
                 -> counterfactuals -> metrics.json, report.html
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from diffice.errors import UserError

# stage name -> (command function path, the config section whose max_steps it trains for)
TRAIN_STAGES: list[tuple[str, str, str]] = [
    ("ddpm", "diffice.commands.ddpm:cmd_train_ddpm", "ddpm"),
    ("segmenter", "diffice.commands.judges:cmd_train_segmenter", "segmenter"),
    ("classifier", "diffice.commands.judges:cmd_train_classifier", "guide"),
    ("oracle", "diffice.commands.judges:cmd_train_oracle", "oracle"),
]
# the model pack also holds the synthesis model (not trained by `demo --scratch`, to keep it short)
SYNTHESIS_STAGE = ("synthesis", "diffice.commands.synthesis:cmd_train_synthesis", "synthesis")


def _wanted_steps(cfg, section: str) -> int:
    """Optimizer steps a finished stage has: the synthesis model's include its pre-alignment."""
    steps = int(cfg[section].max_steps)
    if section == "synthesis" and cfg.synthesis.prealign:
        steps += int(cfg.synthesis.prealign_steps)
    return steps


def _call(target: str) -> Callable[[list[str]], int]:
    import importlib

    mod, fn = target.split(":")
    return getattr(importlib.import_module(mod), fn)


def _trained_steps(ckpt: Path) -> int | None:
    """The global step stored in a diffice checkpoint, or None if there is none.

    Read with the safe loader (no code in the file runs); an unreadable or refused checkpoint
    gives None, and the stage's own training then reports it in one line.
    """
    if not ckpt.is_file():
        return None
    from diffice.nets.weights import torch_load

    try:
        return int(torch_load(ckpt, f"{ckpt}: checkpoint not found", "checkpoint").get("global_step", -1))
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is retrained (fit reports it)
        return None


def train_models(words: Sequence[str], *, log: Callable[[str], None] = print, synthesis: bool = False) -> dict[str, float]:
    """Train (or resume, or skip when finished) the four models (and the synthesis model);
    returns seconds per stage."""
    from diffice.config import config_from_args
    from diffice.modules.common import LAST, run_dir

    cfg = config_from_args(words)
    times: dict[str, float] = {}
    for stage, target, section in [*TRAIN_STAGES, *([SYNTHESIS_STAGE] if synthesis else [])]:
        want = _wanted_steps(cfg, section)
        have = _trained_steps(run_dir(cfg, stage) / LAST)
        if have is not None and have >= want:
            log(f"[{stage}] already trained ({have} steps): {run_dir(cfg, stage) / LAST}")
            times[stage] = 0.0
            continue
        log(f"[{stage}] training for {want} steps" + (f" (resuming at step {have})" if have else ""))
        t0 = time.perf_counter()
        code = _call(target)(list(words))
        if code:
            raise UserError(f"stage '{stage}' failed with exit status {code}")
        times[stage] = time.perf_counter() - t0
    return times


def pipeline_group(words: Sequence[str], prefix: str) -> list[str]:
    """``words`` plus ``wandb.group=<prefix>-<date>-<time>``, so that every stage of one pipeline
    invocation lands in one W&B group; unchanged when the config (a file or a word) already names
    a group, when ``WANDB_RUN_GROUP`` is set, or when W&B is disabled."""
    import os

    from diffice.config import config_from_args
    from diffice.tracking import wandb_group, wandb_mode

    cfg = config_from_args(list(words))
    if wandb_group(cfg) or wandb_mode(cfg) == "disabled":
        return list(words)
    return [*words, f"wandb.group={_slug(prefix)}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"]


def _preset_file(preset: str) -> str:
    from diffice.config import configs_dir

    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        return str(path)
    path = configs_dir() / "preset" / f"{preset}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (configs_dir() / "preset").glob("*.yaml"))
        raise UserError(f"--preset {preset}: no such preset (have: {', '.join(names)})")
    return str(path)


# ----------------------------------------------------------------------------- demo


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


PACK_DIR = "models/demo"
PACK_PRESET = "demo"
PACK_RUNS = "runs/demo-pack"
PACK_MAX_MB = 25.0


def pack_words(pack: Path, need_provenance: bool = True) -> list[str]:
    """Config words that point a counterfactual run at a model pack's checkpoints."""
    from diffice.modules.pack import PACK_FILES

    prov = pack / "PROVENANCE.json"
    if need_provenance and not prov.is_file():
        raise UserError(f"{prov}: not found; {pack} is not a model pack (make demo-models writes one, "
                        "or run 'diffice demo --scratch')")
    keys = {"ddpm": "cf.ddpm_ckpt", "classifier": "cf.guide_ckpt", "oracle": "cf.oracle_ckpt", "synthesis": "synthesis.ckpt"}
    words = []
    for name, (kind, _) in PACK_FILES.items():
        f = pack / name
        if not f.is_file():
            if kind == "synthesis":  # a pack made with --no-synthesis (models/hc18): counterfactuals only
                continue
            raise UserError(f"{f}: missing from the model pack (rebuild it with make demo-models)")
        words.append(f"{keys[kind]}={f}")
    # synthesis: the guide's segmenter judges layout fidelity; the oracle's segmentation (cf.oracle_ckpt) steers
    words.append(f"synthesis.judge_ckpt={pack / 'guide.ckpt'}")
    return words


def pack_has_synthesis(pack: Path) -> bool:
    return (pack / "synthesis.ckpt").is_file()


def pack_summary(pack: Path) -> list[str]:
    """The pack's models and their test numbers, from its provenance file."""
    try:
        prov = json.loads((pack / "PROVENANCE.json").read_text())
    except (OSError, ValueError):
        return []
    m = prov.get("models", {})
    g = (m.get("classifier") or {}).get("test") or {}
    check = prov.get("ddpm_check") or {}
    parts = [f"DDPM {m.get('ddpm', {}).get('trained_steps', '?')} steps"]
    if check.get("dice"):
        parts.append("reconstruction Dice at tau " + ", ".join(
            f"{k} {v:.2f}" for k, v in check["dice"].items() if v is not None))
    if "balanced_accuracy" in g:
        parts.append(f"guide balanced accuracy {g['balanced_accuracy']:.2f}")
    return [f"model pack {pack} ({prov.get('total_mb', 0):.1f} MB, commit {str(prov.get('commit', '?'))[:10]}): "
            + "; ".join(parts)]


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

    t0 = time.perf_counter()
    if ns.scratch:
        words = pipeline_group([_preset_file(ns.preset or "tiny"), *ns.args], "demo-scratch")
        times = train_models(words)
    else:
        pack = Path(ns.pack)
        # the synthesis page: 4 test layouts x 2 samples and two edits of each (about a minute on 2 cores)
        words = pipeline_group([_preset_file(ns.preset or PACK_PRESET), "paths.runs=runs/demo", *pack_words(pack),
                                "synthesis.limit=4", "synthesis.count=2", "synthesis.edits=[remove:csp,grow:th:2]", *ns.args], "demo")
        times = {}
        for line in pack_summary(pack):
            print(line)
    print("[counterfactuals] Diff-ICE on the NSP test frames")
    t1 = time.perf_counter()
    code = _call("diffice.commands.counterfactual:cmd_counterfactuals")(list(words))
    if code:
        return code
    times["counterfactuals"] = time.perf_counter() - t1

    from diffice.config import config_from_args

    cfg = config_from_args(words)
    out = Path(cfg.cf.out)
    syn_report = None
    if not ns.scratch and not ns.no_synthesis and pack_has_synthesis(Path(ns.pack)):
        print("[synthesis] layouts and edits of test frames with the pack's synthesis model")
        t2 = time.perf_counter()
        syn_out = Path(cfg.paths.runs) / "synthesis"
        code = _call("diffice.commands.synthesis:cmd_synthesize")(
            [str(cfg.synthesis.ckpt), *words, "--test", "--out", str(syn_out), "--no-realism"])  # FID of 8 samples says nothing
        if code:
            return code
        times["synthesis"] = time.perf_counter() - t2
        syn_report = syn_out / "report.html"
    elif ns.scratch:
        print("[synthesis] not trained by --scratch (it would double the time): "
              "make train-synthesis, then diffice synthesize runs/synthesis/last.ckpt --test")
    if ns.scratch:
        for line in judges_summary(Path(cfg.paths.runs)):
            print(line)
    total = time.perf_counter() - t0
    print("demo stages: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()) + f"; total {total / 60:.1f} min")
    report = out / "report.html"
    print(f"demo finished: open {report if report.exists() else out}"
          + (f" and the synthesis page {syn_report}" if syn_report is not None and syn_report.exists() else ""))
    return 0


# ----------------------------------------------------------------------------- the model pack


def _git_commit() -> tuple[str, bool]:
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, check=True).stdout.strip())
        return head, dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


def _machine() -> dict:
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _stage_seconds(run: Path) -> float | None:
    """Wall time of a stage's last (re)start: its config.yaml (written at the start) to last.ckpt."""
    try:
        return max(0.0, (run / "last.ckpt").stat().st_mtime - (run / "config.yaml").stat().st_mtime)
    except OSError:
        return None


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
    ns = p.parse_intermixed_args(list(argv))

    import datetime
    import shutil

    from diffice.config import config_from_args, to_dict
    from diffice.io import atomic_write_text
    from diffice.modules.common import LAST, run_dir
    from diffice.modules.pack import PACK_FILES, write_pack_file

    preset = _preset_file(ns.preset)
    words = pipeline_group([preset, f"paths.runs={ns.runs}", *ns.args], "demo-models")
    cfg = config_from_args(words)
    t0 = time.perf_counter()
    times = train_models(words, synthesis=not ns.no_synthesis)
    out = Path(ns.out)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    models: dict[str, dict] = {}
    try:
        for name, (kind, stage) in PACK_FILES.items():
            if kind == "synthesis" and ns.no_synthesis:
                continue
            run = run_dir(cfg, stage)
            facts = write_pack_file(run / LAST, tmp / name, kind)
            # trained by this command: its wall time; trained before: the last (re)start's segment only
            facts["train_seconds"] = times.get(stage) or None
            facts["last_segment_seconds"] = _stage_seconds(run)
            try:
                facts.update({k: v for k, v in json.loads((run / "metrics.json").read_text()).items() if k in ("val", "test")})
            except (OSError, ValueError):
                pass
            models[kind] = facts
        seg_run = run_dir(cfg, "segmenter")
        try:
            models["classifier"]["segmenter_test"] = json.loads((seg_run / "metrics.json").read_text()).get("test")
        except (OSError, ValueError):
            pass
        models["classifier"]["segmenter_train_seconds"] = times.get("segmenter") or None
        models["classifier"]["segmenter_last_segment_seconds"] = _stage_seconds(seg_run)
        total = sum(m["bytes"] for m in models.values())
        if total > ns.max_mb * 1e6:
            raise UserError(f"{out}: the pack would be {total / 1e6:.1f} MB, over --max-mb {ns.max_mb:g}; "
                            "use smaller networks in the preset")
        print("[pack] checking the fp16 pack: DDPM reconstruction at cf.tau (ddpm-check)")
        check = _pack_ddpm_check(tmp, cfg)
        if not ns.no_synthesis:
            print("[pack] checking the fp16 pack: synthesis of test layouts and edits (synthesize --test)")
            models["synthesis"]["test"] = _pack_synthesis_check(tmp, words)
        commit, dirty = _git_commit()
        prov = {
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "diffice demo-models " + " ".join(argv),
            "commit": commit, "uncommitted_changes": dirty,
            "preset": Path(preset).name, "machine": _machine(),
            "total_bytes": total, "total_mb": round(total / 1e6, 2),
            "wall_seconds_this_command": round(time.perf_counter() - t0, 1),
            "note": ns.note,
            "models": models, "ddpm_check": check, "config": to_dict(cfg),
        }
        atomic_write_text(tmp / "PROVENANCE.json", json.dumps(prov, indent=1, default=str))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    print(f"model pack: {out} ({total / 1e6:.1f} MB): " + ", ".join(f"{m['file']} {m['bytes'] / 1e6:.1f} MB" for m in models.values()))
    for line in pack_summary(out):
        print(line)
    return 0


def _pack_synthesis_check(pack: Path, words: Sequence[str]) -> dict:
    """``synthesize --test`` with the pack's files (no report, no W&B): its metrics.json."""
    import shutil
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="diffice-pack-synthesis-"))
    try:
        # a small check (8 layouts x 2 samples, one edit each; the ablation measures more)
        args = [str(pack / "synthesis.ckpt"), *words, *pack_words(pack, need_provenance=False), "wandb.mode=disabled",
                "synthesis.limit=8", "synthesis.count=2", "synthesis.edits=[remove:csp]",
                "--test", "--out", str(out), "--no-report", "--no-realism"]
        if _call("diffice.commands.synthesis:cmd_synthesize")(args):
            raise UserError(f"{pack}: the synthesis check failed")
        m = json.loads((out / "metrics.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    m.pop("ckpt", None)
    return m


def _pack_ddpm_check(pack: Path, cfg) -> dict:
    """ddpm-check of the pack's DDPM with the pack guide's segmenter, on 32 SP test frames."""
    from diffice.commands.ddpm import _segment_fn, check_sp_frames
    from diffice.modules.ddpm import load_ddpm

    segment, classes = _segment_fn(str(pack / "guide.ckpt"), "cpu")
    res = check_sp_frames(load_ddpm(pack / "ddpm.ckpt"), cfg, segment, classes)
    res.pop("examples")
    return res


# ----------------------------------------------------------------------------- experiments


def _respaced_steps(cfg) -> int:
    from diffice.diffusion import space_timesteps

    return len(space_timesteps(int(cfg.diffusion.steps), str(cfg.cf.respacing)))


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-").lower() or "run"


def read_experiment(path: str | Path) -> tuple[dict, dict, dict]:
    """Split an experiment file into (base config layer, runs {label: layer}, options)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: experiment file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(data, dict):
        raise UserError(f"{path}: an experiment file must be a mapping")
    runs = data.pop("runs", None)
    if not isinstance(runs, dict) or not runs:
        raise UserError(f"{path}: key 'runs' must map each row's label to its config keys")
    options = {k: data.pop(k) for k in ("description", "tau_scale", "name", "kind", "realism", "edits_only", "presets", "paired")
               if k in data}
    for pair in options.get("paired") or []:
        if not (isinstance(pair, list) and len(pair) == 2 and all(str(x) in runs for x in pair)):
            raise UserError(f"{path}: paired: each entry must be [ROW_A, ROW_B], two labels under runs (got {pair})")
    if options.get("kind", "counterfactuals") not in ("counterfactuals", "synthesis", "downstream"):
        raise UserError(f"{path}: kind '{options['kind']}' is not counterfactuals, synthesis or downstream")
    for label, layer in runs.items():
        if layer is not None and not isinstance(layer, dict):
            raise UserError(f"{path}: runs.{label} must be a mapping of config keys")
    return data, {str(k): (v or {}) for k, v in runs.items()}, options


def _tau_scale(value, preset: str, path) -> int | None:
    """``tau_scale`` is a number, or a mapping preset name -> number with an optional ``default``."""
    if isinstance(value, dict):
        name = Path(preset).stem
        value = value.get(name, value.get("default"))
    if value is None:
        return None
    try:
        scale = int(value)
    except (TypeError, ValueError):
        scale = 0
    if scale < 1:
        raise UserError(f"{path}: tau_scale must be a positive number of steps or a mapping preset -> steps")
    return scale


def row_layer(layer: dict, base: dict, tau_scale: int | None, files: Sequence, overrides: Sequence[str]) -> dict:
    """A row's config layer with its tau mapped from the file's ``tau_scale``-step schedule to
    the same fraction of the active ``cf.respacing`` (``files``: preset first, then extra files)."""
    from omegaconf import OmegaConf

    from diffice.config import load_config

    layer = OmegaConf.to_container(OmegaConf.create(layer), resolve=False)
    tau = (layer.get("cf") or {}).get("tau", (base.get("cf") or {}).get("tau"))
    if tau_scale and tau is not None:
        cfg = load_config([files[0], base, layer, *files[1:]], overrides)
        layer.setdefault("cf", {})["tau"] = max(1, round(int(tau) * _respaced_steps(cfg) / int(tau_scale)))
    return layer


def cmd_experiment(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="diffice experiment",
        description="Run one of the paper's experiments (experiments/*.yaml): train the models if "
        "needed, make the counterfactuals of every row, and write a markdown table in the paper's "
        "columns to {paths.runs}/experiments/NAME/table.md.",
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

    from diffice.config import load_config, save_config
    from diffice.report.tables import markdown_report

    base, runs, options = read_experiment(ns.experiment)
    if ns.row:
        unknown = [r for r in ns.row if r not in runs]
        if unknown:
            raise UserError(f"{ns.experiment}: no row '{unknown[0]}' (rows: {', '.join(runs)})")
        runs = {k: v for k, v in runs.items() if k in ns.row}
        options["paired"] = [p for p in options.get("paired") or [] if all(str(x) in runs for x in p)]
    if options.get("kind") == "synthesis":
        from diffice.commands.synthesis import run_synthesis_experiment

        return run_synthesis_experiment(ns, base, runs, options)
    if options.get("kind") == "downstream":
        from diffice.downstream.experiment import run_downstream_experiment

        return run_downstream_experiment(ns, base, runs, options)
    tau_scale = _tau_scale(options.get("tau_scale"), ns.preset, ns.experiment)  # checked before any training
    name, preset, files, overrides, out_root = experiment_setup(ns, base, options)
    rows: list[dict] = []
    for label, layer in runs.items():
        layer = row_layer(layer, base, tau_scale, [preset, *files], overrides)
        run_out = out_root / _slug(label)
        cfg = load_config([preset, base, layer, *files], [*overrides, f"cf.out={run_out}"])
        print(f"[{name}] {label}: {cfg.cf.method}, tau {cfg.cf.tau} of {cfg.cf.respacing}, "
              f"lambda_c {list(cfg.cf.lambda_c)}, lambda_p {cfg.cf.lambda_p}")
        run_out.mkdir(parents=True, exist_ok=True)
        layer_file = run_out.parent / f".{_slug(label)}.yaml"
        save_config(cfg, layer_file)
        code = _call("diffice.commands.counterfactual:cmd_counterfactuals")([str(layer_file), *["--wait"] * ns.wait])
        if code:
            return code
        metrics_path = run_out / "metrics.json"
        if not metrics_path.is_file():
            raise UserError(f"{metrics_path}: the run wrote no metrics")
        m = json.loads(metrics_path.read_text())
        m["method"] = label
        rows.append(m)

    body = markdown_report(rows)
    if options.get("paired"):
        from diffice.report.compare import compare_markdown, compare_runs

        body += "\n## Paired comparisons (the same frames in both rows)\n"
        for a, b in options["paired"]:
            res = compare_runs(out_root / _slug(str(a)), out_root / _slug(str(b)))
            res["method_a"], res["method_b"] = str(a), str(b)
            body += f"\n**{a}** vs **{b}**\n\n" + compare_markdown(res)
    write_experiment_table(ns, options, name, out_root, body)
    return 0


def experiment_setup(ns, base: dict, options: dict) -> tuple[str, str, list[str], list[str], Path]:
    """An experiment's name, preset file, extra config files, overrides (with one W&B group for the
    whole invocation unless the file names one) and output folder; trains the models it needs first."""
    from diffice.config import load_config, split_args

    name = str(options.get("name") or Path(ns.experiment).stem)
    files, overrides = split_args(ns.args)
    preset = _preset_file(ns.preset)
    if not (base.get("wandb") or {}).get("group"):
        overrides = pipeline_group([preset, *files, *overrides], f"experiment-{name}")[1 + len(files):]
    if getattr(ns, "pack", None):
        overrides = [*pack_words(Path(ns.pack)), *overrides]
    else:
        train_models([preset, *files, *overrides])
    base_cfg = load_config([preset, base, *files], overrides)
    return name, preset, files, overrides, Path(base_cfg.paths.runs) / "experiments" / name


def write_experiment_table(ns, options: dict, name: str, out_root: Path, body: str) -> Path:
    """``{out_root}/table.md``: title, description, the command that made it, then ``body``."""
    from diffice.io import atomic_write_text

    head = [f"# {name}", "", str(options.get("description", "")).strip(), "",
            f"Preset `{ns.preset}`; command: `diffice experiment {ns.experiment} --preset {ns.preset}"
            + (f" --pack {ns.pack}" if getattr(ns, "pack", None) else "")
            + "".join(f" --row '{r}'" for r in getattr(ns, "row", None) or [])
            + (" " + " ".join(ns.args) if ns.args else "") + "`", ""]
    table = out_root / "table.md"
    atomic_write_text(table, "\n".join(head) + "\n" + body)
    print(f"[{name}] table: {table}")
    return table
