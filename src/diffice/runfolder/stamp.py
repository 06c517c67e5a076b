"""One stamp for every run folder: ``run.json`` = ``{"kind": ..., "version": 1, "settings": {...}}``.

A counterfactual run, a synthesis run and a downstream study each write their finished items into
a folder and skip them when rerun, so a folder must only ever hold items made with one kind of run
and one set of settings (the keys that change an item; a batch size or a limit does not). Each
kind declares itself once (:class:`RunKind`: its name, the items a folder of it holds, what to do
when refused, the stamp an older diffice wrote) and the settings it is tied to; this module does
the rest for all of them:

* :func:`check_run_folder` refuses a folder stamped with another kind or other settings (naming
  the first key that differs), and a folder that holds items but no stamp;
* :func:`write_stamp` stamps it (when the run starts writing: a run refused at set-up leaves nothing);
* :func:`claim_run_folder` does both.

A folder written by an older diffice holds its kind's old stamp instead (``config.yaml``,
``synthesis-run.json``, ``study.json``): its settings are read from there, and the folder is
stamped when the run goes on. A setting an older stamp lacks but the folder records elsewhere
(a counterfactual run's ``trainer.precision``, in its ``config.yaml``) is read from there
(``RunKind.unstamped``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffice.errors import UserError

STAMP = "run.json"
VERSION = 1


@dataclass(frozen=True)
class RunKind:
    name: str                       # "counterfactuals", "synthesis", "downstream"
    noun: str                       # how a message names a run of this kind: "synthesis run"
    items: tuple[str, ...]          # what a folder of this kind holds once it has run (folders or files)
    fix: str                        # what to do when the folder is refused
    legacy: tuple[str, Callable[[Path], dict]] | None = None  # an older diffice's stamp file, and its settings
    # settings keys (dotted) added after folders of this kind existed, each with the value that does
    # what a run did before the key existed: a stamp without the key counts as holding that value
    added: tuple[tuple[str, Any], ...] = ()
    # settings -> the settings that matter (a key without effect under the others removed), applied to
    # both sides of a comparison
    canonical: Callable[[dict], dict] | None = None
    # (folder, a stamp's settings) -> those settings with what an older diffice left out of its stamp
    # read from the folder itself (before ``added``)
    unstamped: Callable[[Path, dict], dict] | None = None


def with_added(settings: dict, added: tuple[tuple[str, Any], ...]) -> dict:
    """``settings`` with every key of ``added`` it lacks set to the value given there."""
    out = json.loads(json.dumps(settings))
    for dotted, value in added:
        *parents, last = dotted.split(".")
        node = out
        for key in parents:
            if not isinstance(node.get(key), dict):
                break
            node = node[key]
        else:
            node.setdefault(last, value)
    return out


def first_difference(now: Any, there: Any, prefix: str = "") -> str | None:
    """``key.sub: <there> there, <now> now`` for the first key (in sorted order) whose values differ."""
    if isinstance(now, dict) and isinstance(there, dict):
        for key in sorted(set(now) | set(there)):
            diff = first_difference(now.get(key), there.get(key), f"{prefix}{key}.")
            if diff:
                return diff
        return None
    if now != there:
        return f"{prefix.rstrip('.')}: {there!r} there, {now!r} now"
    return None


def plain(settings: dict) -> dict:
    """``settings`` as the stamp stores them (JSON values: lists, not tuples)."""
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def read_stamp(out: str | Path) -> dict | None:
    """The stamp of ``out`` (``{"kind", "version", "settings"}``), None when there is none."""
    path = Path(out) / STAMP
    if not path.is_file():
        return None
    try:
        stamp = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({err}); delete the run folder") from err
    if not isinstance(stamp, dict) or not isinstance(stamp.get("settings"), dict) or not stamp.get("kind"):
        raise UserError(f"{path}: not a diffice run stamp (kind, settings); delete the run folder")
    return stamp


def _legacy(out: Path, kind: RunKind) -> dict | None:
    if kind.legacy is None or not (out / kind.legacy[0]).is_file():
        return None
    name, settings = kind.legacy
    try:
        return settings(out / name)
    except (OSError, ValueError) as err:
        cause = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{out / name}: unreadable ({cause}); {kind.fix}") from err


def stamped_settings(out: str | Path, kind: RunKind, stamp: dict) -> dict:
    """The settings of ``out``'s ``stamp``, with what an older diffice did not stamp read from the folder."""
    return kind.unstamped(Path(out), stamp["settings"]) if kind.unstamped is not None else stamp["settings"]


def check_run_folder(out: str | Path, kind: RunKind, settings: dict) -> None:
    """Refuse ``out`` when it holds a run of another kind or other settings, or items but no stamp."""
    out = Path(out)
    stamp = read_stamp(out)
    if stamp is not None and stamp["kind"] != kind.name:
        raise UserError(f"{out}: holds a run of kind '{stamp['kind']}', not a {kind.noun}; {kind.fix}")
    there = stamped_settings(out, kind, stamp) if stamp is not None else _legacy(out, kind)
    if there is None:
        found = [i for i in kind.items if (out / i).is_file() or ((out / i).is_dir() and any((out / i).iterdir()))]
        if found:
            raise UserError(f"{out}: holds {' and '.join(found)} but no {STAMP}; {kind.fix}")
        return
    diff = settings_difference(kind, settings, there)
    if diff:
        raise UserError(f"{out}: holds a {kind.noun} with other settings ({diff}); {kind.fix}")


def settings_difference(kind: RunKind, settings: dict, there: dict) -> str | None:
    """The first difference that matters between a run's ``settings`` and a stamp's (None: none),
    keys added since counting as their old value and keys without effect left out."""
    now, there = with_added(plain(settings), kind.added), with_added(plain(there), kind.added)
    if kind.canonical is not None:
        now, there = kind.canonical(now), kind.canonical(there)
    return first_difference(now, there)


def write_stamp(out: str | Path, kind: RunKind, settings: dict) -> Path:
    """Write ``{out}/run.json`` (creating ``out``)."""
    from diffice.io import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    body = {"kind": kind.name, "version": VERSION, "settings": plain(settings)}
    return atomic_write_text(out / STAMP, json.dumps(body, indent=1, sort_keys=True) + "\n")


def claim_run_folder(out: str | Path, kind: RunKind, settings: dict) -> None:
    """:func:`check_run_folder`, then :func:`write_stamp`."""
    check_run_folder(out, kind, settings)
    write_stamp(out, kind, settings)
