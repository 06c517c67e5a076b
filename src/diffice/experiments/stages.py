"""The training stages of a pipeline (demo --scratch, demo-models, an experiment): each one
trained, resumed, or skipped when its checkpoint holds all its steps."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from omegaconf import DictConfig


def _ddpm(cfg: DictConfig) -> Path:
    from diffice.modules.ddpm import train_ddpm

    last = train_ddpm(cfg)
    print(f"DDPM checkpoint: {last}")
    return last


def _segmenter(cfg: DictConfig) -> Path:
    from diffice.modules.judges import train_segmenter

    return train_segmenter(cfg)


def _classifier(cfg: DictConfig) -> Path:
    from diffice.modules.judges import train_classifier

    return train_classifier(cfg)


def _oracle(cfg: DictConfig) -> Path:
    from diffice.modules.judges import train_oracle

    return train_oracle(cfg)


def _synthesis(cfg: DictConfig) -> Path:
    from diffice.modules.synthesis import train_synthesis

    last = train_synthesis(cfg)
    print(f"synthesis checkpoint: {last}")
    return last


# stage (its folder under paths.runs) -> (trainer, the config section whose max_steps it trains for)
TRAIN_STAGES: dict[str, tuple[Callable[[DictConfig], Path], str]] = {
    "ddpm": (_ddpm, "ddpm"),
    "segmenter": (_segmenter, "segmenter"),
    "classifier": (_classifier, "guide"),
    "oracle": (_oracle, "oracle"),
}
# the model pack also holds the synthesis model (not trained by `demo --scratch`, to keep it short)
SYNTHESIS_STAGE: dict[str, tuple[Callable[[DictConfig], Path], str]] = {"synthesis": (_synthesis, "synthesis")}


def wanted_steps(cfg: DictConfig, section: str) -> int:
    """Optimizer steps a finished stage has: the synthesis model's include its pre-alignment."""
    steps = int(cfg[section].max_steps)
    if section == "synthesis" and cfg.synthesis.prealign:
        steps += int(cfg.synthesis.prealign_steps)
    return steps


def trained_steps(ckpt: Path) -> int | None:
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


def train_models(cfg: DictConfig, *, log: Callable[[str], None] = print, synthesis: bool = False,
                 skip: Mapping[str, str] | None = None) -> dict[str, float]:
    """Train (or resume, or skip when finished) the four models (and the synthesis model) of the
    resolved config ``cfg``; returns seconds per stage. Every stage gets its own copy of ``cfg``.
    ``skip``: stages not to train at all, each with why (a model pack keeps them from an earlier pack)."""
    skip = skip or {}
    from diffice.modules.common import LAST, run_dir

    times: dict[str, float] = {}
    for stage, (train, section) in {**TRAIN_STAGES, **(SYNTHESIS_STAGE if synthesis else {})}.items():
        if stage in skip:
            log(f"[{stage}] not trained: {skip[stage]}")
            continue
        want = wanted_steps(cfg, section)
        have = trained_steps(run_dir(cfg, stage) / LAST)
        if have is not None and have >= want:
            log(f"[{stage}] already trained ({have} steps): {run_dir(cfg, stage) / LAST}")
            times[stage] = 0.0
            continue
        log(f"[{stage}] training for {want} steps" + (f" (resuming at step {have})" if have else ""))
        t0 = time.perf_counter()
        train(copy.deepcopy(cfg))
        times[stage] = time.perf_counter() - t0
    return times
