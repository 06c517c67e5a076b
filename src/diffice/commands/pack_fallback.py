"""``diffice counterfactuals`` on a fresh clone: the shipped model pack when nothing is trained.

``make counterfactuals`` reads the DDPM, guide and oracle from ``{paths.runs}/{ddpm,classifier,
oracle}/last.ckpt``. When none of the three exists and all three keys still name those default
paths, the pack in ``models/demo`` is used instead, provided it makes frames of the requested
size and classes (the tiny and demo presets; not the paper's 224x288): the command says which
files it used. Otherwise (a path named by hand, one model trained, a pack of another size) the
config is left alone and a missing checkpoint is refused as before ("train the ddpm first").
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

PACK_DIR = Path(__file__).resolve().parents[3] / "models" / "demo"
PACK_FILES = {"cf.ddpm_ckpt": ("ddpm", "ddpm.ckpt"), "cf.guide_ckpt": ("classifier", "guide.ckpt"),
              "cf.oracle_ckpt": ("oracle", "oracle.ckpt")}


def _pack_data(pack: Path) -> dict | None:
    try:
        prov = json.loads((pack / "PROVENANCE.json").read_text())
    except (OSError, ValueError):
        return None
    data = ((prov.get("config") or {}).get("data")) if isinstance(prov, dict) else None
    return data if isinstance(data, dict) else None


def use_pack_if_untrained(cfg: DictConfig, pack: Path = PACK_DIR) -> list[str]:
    """Point ``cf.*_ckpt`` at the pack's files when nothing is trained (see the module docstring);
    returns the lines to print (none when the config is left alone)."""
    runs = Path(str(cfg.paths.runs))
    current = {key: Path(str(cfg.cf[key.split(".")[1]])) for key in PACK_FILES}
    defaults = {key: runs / stage / "last.ckpt" for key, (stage, _) in PACK_FILES.items()}
    if any(current[k] != defaults[k] or current[k].exists() for k in PACK_FILES):
        return []
    files = {key: pack / name for key, (_, name) in PACK_FILES.items()}
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
