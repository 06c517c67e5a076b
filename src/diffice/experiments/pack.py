"""Using a model pack (``models/demo``): the config words that point a run at its files, a line
on what it holds, and the fallback of ``diffice counterfactuals`` on a fresh clone.

Fallback: ``make counterfactuals`` reads the DDPM, guide and oracle from ``{paths.runs}/{ddpm,
classifier,oracle}/last.ckpt``. When none of the three exists and all three keys still name those
default paths, the pack in ``models/demo`` is used instead, provided it makes frames of the
requested size and classes (the tiny and demo presets; not the paper's 224x288): the command says
which files it used. Otherwise (a path named by hand, one model trained, a pack of another size)
the config is left alone and a missing checkpoint is refused as before ("train the ddpm first").
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from diffice.errors import UserError

PACK_DIR = "models/demo"
PACK_PRESET = "demo"
PACK_RUNS = "runs/demo-pack"
PACK_MAX_MB = 25.0
SHIPPED_PACK = Path(__file__).resolve().parents[3] / "models" / "demo"
# config key of the counterfactuals -> (training stage, file in the pack)
FALLBACK_FILES = {"cf.ddpm_ckpt": ("ddpm", "ddpm.ckpt"), "cf.guide_ckpt": ("classifier", "guide.ckpt"),
                  "cf.oracle_ckpt": ("oracle", "oracle.ckpt")}


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


def _pack_data(pack: Path) -> dict | None:
    try:
        prov = json.loads((pack / "PROVENANCE.json").read_text())
    except (OSError, ValueError):
        return None
    data = ((prov.get("config") or {}).get("data")) if isinstance(prov, dict) else None
    return data if isinstance(data, dict) else None


def use_pack_if_untrained(cfg: DictConfig, pack: Path = SHIPPED_PACK) -> list[str]:
    """Point ``cf.*_ckpt`` at the pack's files when nothing is trained (see the module docstring);
    returns the lines to print (none when the config is left alone)."""
    runs = Path(str(cfg.paths.runs))
    current = {key: Path(str(cfg.cf[key.split(".")[1]])) for key in FALLBACK_FILES}
    defaults = {key: runs / stage / "last.ckpt" for key, (stage, _) in FALLBACK_FILES.items()}
    if any(current[k] != defaults[k] or current[k].exists() for k in FALLBACK_FILES):
        return []
    files = {key: pack / name for key, (_, name) in FALLBACK_FILES.items()}
    data = _pack_data(pack)
    if data is None or not all(f.is_file() for f in files.values()):
        return []
    size = [int(v) for v in data.get("image_size") or []]
    if size != [int(v) for v in cfg.data.image_size] or list(data.get("classes") or []) != list(cfg.data.classes):
        return []
    for key, f in files.items():
        cfg.cf[key.split(".")[1]] = str(f)
    names = ", ".join(f.name for f in files.values())
    return [f"no trained models in {runs} (ddpm, classifier, oracle): using the shipped model pack {pack} "
            f"({names}; {size[0]}x{size[1]} frames)"]
