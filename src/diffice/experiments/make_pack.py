"""Making the model pack (``diffice demo-models``): the demo preset's models trained (resuming, or
skipping stages already trained), then fp16 checkpoints of the DDPM (EMA), the guide (with its
segmenter), the oracle and the synthesis model, checked (ddpm-check, a small synthesis run) and
described in ``PROVENANCE.json`` (config, commit, steps, wall time, machine, test metrics)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from diffice.errors import UserError
from diffice.experiments.pack import pack_summary, pack_words


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


def _kept_stages(cfg, keep: Path | None, synthesis: bool) -> tuple[dict[str, str], dict, str]:
    """With ``--keep PACK``: the stages not to train, each with why (those whose run folder holds no checkpoint
    and whose file PACK has, taken from it as they are; the segmenter too when a packed or trained guide carries
    it), PACK's PROVENANCE entries of the models and its creation time."""
    from diffice.experiments.stages import trained_steps, wanted_steps
    from diffice.modules.common import LAST, run_dir
    from diffice.modules.pack import PACK_FILES

    if keep is None:
        return {}, {}, ""
    try:
        prov = json.loads((keep / "PROVENANCE.json").read_text())
        entries = prov["models"]
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{keep / 'PROVENANCE.json'}: not a readable pack provenance ({err}); --keep names a model pack") from err
    kept = {stage: f"{keep / name} stands in" for name, (kind, stage) in PACK_FILES.items()
            if (kind != "synthesis" or synthesis) and not (run_dir(cfg, stage) / LAST).exists()
            and (keep / name).is_file() and kind in entries}
    guide_done = (trained_steps(run_dir(cfg, "classifier") / LAST) or 0) >= wanted_steps(cfg, "guide")
    if ("classifier" in kept or guide_done) and not (run_dir(cfg, "segmenter") / LAST).exists():
        kept["segmenter"] = "the guide carries its own"
    return kept, entries, str(prov.get("created", "?"))


def make_pack(args: Sequence[str], *, preset: str, runs: str, out: str | Path, max_mb: float, note: str = "",
              command: str = "", synthesis: bool = True, keep: str | Path | None = None) -> Path:
    """Train the models of ``preset`` into ``runs`` and write the pack into ``out`` (replacing it
    only once the new one is complete); ``command``: the command line recorded in PROVENANCE.json;
    ``synthesis=False``: a counterfactual pack without the synthesis model (e.g. the hc18 preset);
    ``keep``: an earlier pack whose files (and provenance entries) stand in for the stages ``runs`` has
    no checkpoint of, so that a campaign across sessions replaces one model of a pack at a time."""
    import datetime
    import shutil

    from diffice.config import config_from_args, to_dict
    from diffice.experiments.spec import pipeline_group, preset_file
    from diffice.experiments.stages import train_models
    from diffice.io import atomic_write_text
    from diffice.modules.common import LAST, run_dir
    from diffice.modules.pack import PACK_FILES, write_pack_file

    preset = preset_file(preset)
    words = pipeline_group([preset, f"paths.runs={runs}", *args], "demo-models")
    cfg = config_from_args(words)
    t0 = time.perf_counter()
    keep = Path(keep) if keep else None
    kept, kept_entries, kept_created = _kept_stages(cfg, keep, synthesis)
    times = train_models(cfg, synthesis=synthesis, skip=kept)
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    models: dict[str, dict] = {}
    try:
        for name, (kind, stage) in PACK_FILES.items():
            if kind == "synthesis" and not synthesis:
                continue
            run = run_dir(cfg, stage)
            if stage in kept:
                shutil.copyfile(keep / name, tmp / name)
                models[kind] = {**kept_entries[kind], "kept_from": f"{keep} (created {kept_created})"}
                continue
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
        init = cfg.guide.get("init_ckpt")
        if "segmenter" in kept and "classifier" not in kept and init and keep is not None \
                and Path(str(init)).resolve() == (keep / "guide.ckpt").resolve():
            # the guide continued the earlier pack's guide: its segmenter, and that segmenter's facts, are the same
            models["classifier"].update({k: v for k, v in kept_entries.get("classifier", {}).items() if k.startswith("segmenter_")})
        if "classifier" not in kept and "segmenter" not in kept:
            try:
                models["classifier"]["segmenter_test"] = json.loads((seg_run / "metrics.json").read_text()).get("test")
            except (OSError, ValueError):
                pass
            models["classifier"]["segmenter_train_seconds"] = times.get("segmenter") or None
            models["classifier"]["segmenter_last_segment_seconds"] = _stage_seconds(seg_run)
        total = sum(m["bytes"] for m in models.values())
        if total > max_mb * 1e6:
            raise UserError(f"{out}: the pack would be {total / 1e6:.1f} MB, over --max-mb {max_mb:g}; "
                            "use smaller networks in the preset")
        print("[pack] checking the fp16 pack: DDPM reconstruction at cf.tau (ddpm-check)")
        check = _pack_ddpm_check(tmp, cfg)
        if synthesis:
            print("[pack] checking the fp16 pack: synthesis of test layouts and edits (synthesize --test)")
            models["synthesis"]["test"] = _pack_synthesis_check(tmp, words)
        commit, dirty = _git_commit()
        prov = {
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command,
            "commit": commit, "uncommitted_changes": dirty,
            "preset": Path(preset).name, "machine": _machine(),
            "total_bytes": total, "total_mb": round(total / 1e6, 2),
            "wall_seconds_this_command": round(time.perf_counter() - t0, 1),
            "note": note,
            "models": models, "ddpm_check": check, "config": to_dict(cfg),
        }
        if cfg.guide.pretrained:
            prov["models"]["classifier"]["derived_from"] = _SONONET_SOURCE
            atomic_write_text(tmp / "NOTICE", _notice(Path(str(cfg.guide.pretrained)).name))
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
    return out


_SONONET_SOURCE = ("SonoNet-16 weights of Baumgartner et al., 'SonoNet: Real-Time Detection and Localisation of Fetal "
                   "Standard Scan Planes in Freehand Ultrasound', IEEE TMI 2017 (the authors' release, Apache-2.0)")


def _notice(weights: str) -> str:
    """The NOTICE of a pack whose guide was fine-tuned from the authors' SonoNet weights (a derived work)."""
    return (f"guide.ckpt in this folder is a derived work: its predictor l was initialised from {weights}, the\n"
            f"{_SONONET_SOURCE},\nand then fine-tuned by diffice (`diffice train-classifier` with guide.pretrained; "
            "PROVENANCE.json).\nThe original weights are licensed under the Apache License, Version 2.0 "
            "(http://www.apache.org/licenses/LICENSE-2.0);\nthey are not part of this repository. The other files "
            "of this pack owe nothing to them.\n")


def _pack_synthesis_check(pack: Path, words: Sequence[str]) -> dict:
    """``synthesize --test`` with the pack's files (no report, no W&B): its metrics.json."""
    import shutil
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="diffice-pack-synthesis-"))
    try:
        # a small check (8 layouts x 2 samples, one edit each; the ablation measures more)
        from diffice.config import config_from_args
        from diffice.experiments.synthesis import synthesize_test

        cfg = config_from_args([*words, *pack_words(pack, need_provenance=False), "wandb.mode=disabled", "synthesis.limit=8",
                                "synthesis.count=2", "synthesis.edits=[remove:csp]"])
        synthesize_test(cfg, pack / "synthesis.ckpt", out, realism=False, report=False)
        m = json.loads((out / "metrics.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    m.pop("ckpt", None)
    return m


def _pack_ddpm_check(pack: Path, cfg) -> dict:
    """ddpm-check of the pack's DDPM with the pack guide's segmenter, on 32 SP test frames."""
    from diffice.modules.ddpm import check_sp_frames, load_ddpm, segment_fn

    segment, classes = segment_fn(str(pack / "guide.ckpt"), "cpu")
    res = check_sp_frames(load_ddpm(pack / "ddpm.ckpt"), cfg, segment, classes)
    for key in ("examples", "per_frame"):  # the provenance keeps the summary
        res.pop(key)
    return res
