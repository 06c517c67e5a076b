"""The ``diffice`` command: ``diffice <command> [CONFIG.yaml ...] [key=value ...] [--options]``.

Each command lives in its own module and is imported only when it runs, so ``diffice --help``
is instant. A :class:`~diffice.errors.UserError` anywhere ends the command with one line on
stderr and exit status 2, and so does an ``OSError`` (a read-only or full disk, a path that is
not a folder): "{path}: {cause}".

Nothing here reaches the network: ``import diffice`` has already switched off the update
checks and hub look-ups of the libraries it uses (see ``diffice/__init__.py``).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence

from diffice.errors import EXIT_USER_ERROR, UserError, say_line

# name -> (module:function, one-line help). Each function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("diffice.commands.data:cmd_config", "print the resolved config"),
    "phantoms": ("diffice.commands.data:cmd_phantoms", "write a synthetic phantom data set with ground truth"),
    "hc18-faults": ("diffice.commands.data:cmd_hc18_faults", "real HC18 heads with acquisition faults of known severity (SP/NSP pairs)"),
    "manifest": ("diffice.commands.data:cmd_manifest", "write a manifest CSV from your own folder of frames (SP/ and NSP/ or a labels CSV)"),
    "data-check": ("diffice.commands.data:cmd_data_check", "count, size and sanity-check a data set"),
    "realism": ("diffice.commands.data:cmd_realism", "compare two sets of frames: FID, histograms, speckle statistics"),
    "train-ddpm": ("diffice.commands.ddpm:cmd_train_ddpm", "train the unconditional DDPM"),
    "sample": ("diffice.commands.ddpm:cmd_sample", "sample frames from a trained DDPM"),
    "ddpm-check": ("diffice.commands.ddpm:cmd_ddpm_check", "does the DDPM keep the anatomy at the counterfactuals' noise level?"),
    "train-segmenter": ("diffice.commands.judges:cmd_train_segmenter", "train the segmentation network"),
    "train-classifier": ("diffice.commands.judges:cmd_train_classifier", "train the standard-plane guide f(x)=l(s(x),x)"),
    "train-oracle": ("diffice.commands.judges:cmd_train_oracle", "train the PCBM concept oracle"),
    "sononet": ("diffice.commands.judges:cmd_sononet", "label frames with a SonoNet (e.g. the official weights)"),
    "counterfactuals": ("diffice.commands.counterfactual:cmd_counterfactuals", "generate counterfactuals (Diff-ICE and baselines)"),
    "evaluate": ("diffice.commands.counterfactual:cmd_evaluate", "recompute a counterfactual run's metrics from its files"),
    "compare": ("diffice.commands.counterfactual:cmd_compare", "two counterfactual runs on the same frames: paired tests"),
    "reader-study": ("diffice.commands.counterfactual:cmd_reader_study", "make a blinded expert reader study page (counterfactual or synthesis run)"),
    "reader-score": ("diffice.commands.counterfactual:cmd_reader_score", "score a reader study's answers"),
    "train-synthesis": ("diffice.commands.synthesis:cmd_train_synthesis", "train the layout-conditioned DDPM (FetalFlex synthesis)"),
    "synthesize": ("diffice.commands.synthesis:cmd_synthesize", "synthesise frames from layouts, or edit a frame's anatomy"),
    "demo": ("diffice.commands.demo:cmd_demo", "Diff-ICE on phantom data with the shipped model pack (--scratch: train first)"),
    "demo-models": ("diffice.commands.pack:cmd_demo_models", "train the demo's models and write the model pack (models/demo)"),
    "experiment": ("diffice.commands.experiment:cmd_experiment", "run one of the paper's experiments (experiments/*.yaml)"),
    "wandb-check": ("diffice.commands.wandb:cmd_wandb_check", "count and check the pictures, tables and artifacts of local W&B runs"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: diffice <command> [CONFIG.yaml ...] [key=value ...] [options]",
        "",
        "Diffusion-based iterative counterfactual explanations for fetal ultrasound quality.",
        "",
        "commands:",
    ]
    lines += [f"  {n.ljust(width)}  {h}" for n, (_, h) in COMMANDS.items()]
    lines += ["", "Run 'diffice <command> --help' for a command's options."]
    return "\n".join(lines)


def _quiet_libraries() -> None:
    """Keep the terminal to diffice's own lines: library chatter goes (set DIFFICE_VERBOSE=1 to keep it)."""
    if os.environ.get("DIFFICE_VERBOSE"):
        return
    import logging
    import warnings

    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch.trainer.connectors.checkpoint_connector",
        "lightning.pytorch.accelerators.cuda",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*")
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")  # small data sets: noise


def os_error_line(err: OSError) -> str:
    """One line for an OSError: "{path}: {cause}" (both paths of a failed rename)."""
    cause = err.strerror or str(err) or type(err).__name__
    paths = [str(f) for f in (err.filename, err.filename2) if f is not None]
    return f"{' -> '.join(paths)}: {cause}" if paths else f"{cause} ({type(err).__name__})"


def _resolve(target: str):
    mod, fn = target.split(":")
    return getattr(importlib.import_module(mod), fn)


def _terminate_as_interrupt(signum, frame) -> None:
    """SIGTERM (``kill``, a scheduler's time limit) stops a run as Ctrl-C does: Lightning's
    graceful shutdown, checkpoints as last written (atomically), and a rerun resumes."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)  # only as the process's own entry point
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from diffice import __version__

        print(f"diffice {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"diffice: error: unknown command '{name}' (see 'diffice --help')", file=sys.stderr)
        return EXIT_USER_ERROR
    os.environ.setdefault("WANDB_SILENT", "true")
    _quiet_libraries()
    import argparse

    usage_error = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _usage_error  # a bad option is one line too, not the whole usage
    try:
        code = _resolve(COMMANDS[name][0])(rest)
    except UserError as err:
        say_line(f"diffice {name}: error: {err}")
        return EXIT_USER_ERROR
    except OSError as err:
        say_line(f"diffice {name}: error: {os_error_line(err)}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"diffice {name}: interrupted; finished work is kept and a rerun resumes it", file=sys.stderr)
        return 130
    finally:
        argparse.ArgumentParser.error = usage_error
    return int(code or 0)


def _usage_error(parser, message: str):
    """``ArgumentParser.error`` while a command runs: one line (the option and why), exit status 2."""
    raise UserError(f"{message} (see '{parser.prog} --help')")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
