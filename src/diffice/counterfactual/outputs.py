"""The counterfactual run folder: its results.csv and the settings its frames depend on.

Layout (``{cf.out}``)::

    run.json                                         <- the stamp: kind and settings (diffice.runfolder)
    config.yaml                                      <- the run's resolved config (the report reads it)
    frames/{index:06d}/input.png iter1.png .. iterL.png cf.png seg_input.png seg_cf.png
                       [target.png] record.json      <- written LAST: its presence = frame finished
    results.csv                                      <- one row per input, assembled at the end

A frame's files are written with :func:`diffice.runfolder.write_frame` (a temporary folder renamed
into place once ``record.json`` is in it), so ``frames/`` only ever holds finished frames and a
restarted run redoes at most the frames a killed one was writing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffice.counterfactual.settings import precision_name
from diffice.errors import UserError
from diffice.runfolder import write_rows_csv
from diffice.runfolder.stamp import RunKind


def results_rows(records: Sequence[dict]) -> list[dict]:
    """Flatten records into results.csv rows (concepts and per-iteration scores as columns)."""
    max_iters = max((len(r.get("p_iters") or []) for r in records), default=0)
    rows = []
    for r in records:
        row = {
            k: r.get(k)
            for k in (
                "index", "id", "method", "lambda_c", "p_input", "p_cf", "flipped", "qs_input", "qs_cf",
                "target_l1_input", "target_l1_cf", "nfe", "seconds", "iterations",
            )
        }
        for name, v in (r.get("concepts_input") or {}).items():
            row[f"{name}_input"] = v
        for name, v in (r.get("concepts_cf") or {}).items():
            row[f"{name}_cf"] = v
        p_iters = r.get("p_iters") or []
        for k in range(max_iters):
            row[f"p_iter{k + 1}"] = p_iters[k] if k < len(p_iters) else None
        rows.append(row)
    return rows


def write_results_csv(out: str | Path, records: Sequence[dict]) -> Path:
    """``results.csv``: one row per record (per input), written atomically."""
    return write_rows_csv(Path(out) / "results.csv", results_rows(records))


# ----------------------------------------------------------------------------- the run's settings

# keys that do not change a frame's counterfactual (outputs do not depend on batch size)
_IGNORED = {"cf": {"batch_size", "limit", "ids", "out"}, "data": {"batch_size", "num_workers", "augment"}}


def method_config(cfg: dict) -> dict:
    """The part of a resolved config (as a dict) that determines the counterfactuals: ``seed``,
    ``cf``, ``data``, ``features`` (less the keys above) and ``trainer.precision`` (as ``precision``)."""
    precision = (cfg.get("trainer") or {}).get("precision", "32-true")
    rel: dict[str, Any] = {"seed": cfg.get("seed"), "precision": precision_name(precision)}
    for section in ("cf", "data", "features"):
        sec = dict(cfg.get(section) or {})
        for key in _IGNORED.get(section, ()):
            sec.pop(key, None)
        rel[section] = sec
    return rel


def _effective(settings: dict) -> dict:
    """The settings without keys that change nothing under the others: the sparse refinement's
    parameters when it is off, the retry passes of a λc search that restarts."""
    out = dict(settings)
    cf = dict(out.get("cf") or {})
    if cf.get("sparse", "none") == "none":
        for key in [k for k in cf if k.startswith("sparse_")]:
            cf.pop(key)
    if cf.get("lambda_search", "restart") == "restart":
        cf.pop("retry_iterations", None)
    out["cf"] = cf
    return out


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(str(err).splitlines()[0]) from err


def _older_precision(stored: dict) -> str:
    """The precision of a run an older diffice made (before the precision was stamped): its config's
    ``trainer.precision``. It ran the whole predict step under the mixed ones' autocast, so without
    ``cf.autocast=bf16`` its guidance ran in reduced precision: a value no run of this diffice has."""
    name = precision_name((stored.get("trainer") or {}).get("precision", "32-true"))
    if name != "32-true" and (stored.get("cf") or {}).get("autocast", "none") == "none":
        return f"{name}, guidance under autocast (an older diffice)"
    return name


def _config_yaml_settings(path: Path) -> dict:
    """The settings of a run folder an older diffice stamped only with its ``config.yaml``."""
    stored = _read_yaml(path)
    return {**method_config(stored), "precision": _older_precision(stored)}


def _unstamped(out: Path, settings: dict) -> dict:
    """A stamp without ``precision`` (an older diffice): the precision of the folder's ``config.yaml``,
    written with the stamp (32-true when that file is gone)."""
    if "precision" in settings:
        return settings
    path = out / "config.yaml"
    try:
        stored = _read_yaml(path) if path.is_file() else {}
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
                        f"{RUN_KIND.fix}") from err
    return {**settings, "precision": _older_precision(stored)}


RUN_KIND = RunKind("counterfactuals", "counterfactual run", items=("frames",), fix="set cf.out to a new folder or delete it",
                   legacy=("config.yaml", _config_yaml_settings),
                   added=(("cf.lambda_search", "restart"), ("cf.retry_iterations", 1), ("cf.sparse", "none"),
                          ("cf.sparse_threshold", 0.1), ("cf.sparse_sigma", 2.0), ("cf.sparse_dilation", 2),
                          ("cf.sparse_tau", 10), ("cf.sparse_guided", True), ("cf.sparse_opening", 0),
                          ("precision", "32-true"), ("cf.encode", "noise")),
                   canonical=_effective, unstamped=_unstamped)
