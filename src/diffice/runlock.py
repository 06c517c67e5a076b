"""One writer per run folder: an operating-system lock on ``{folder}/.lock``.

Counterfactual runs, synthesis runs, downstream studies and trainings resume into their folder, so
two of them started into the same folder would both compute every item (``diffice evaluate`` and
``reader-study`` lock the run they write into as well). :func:`run_lock` takes an
exclusive ``fcntl.flock`` on ``{folder}/.lock`` for the whole run and writes who holds it (pid,
host, command, start time) into that file for the refusal message. The kernel releases the lock
when the process ends, however it ends (``kill -9`` included), so a killed run's lock is taken
over by the next run, which says so. The flock is the only truth: a lock file no process holds is
stale (whatever pid it names), and a lock some process holds is never broken, even when the pid it
names has ended: a child that process forked (a DataLoader worker) holds the same open file and may
still write, so the folder stays refused (the message says so) until that child ends too.

A second run into a held folder stops with a :class:`~diffice.errors.UserError` naming the folder
and the holder (exit status 2), or with ``wait=True`` waits until the folder is free. The lock is
re-entrant within a thread (a command holds it around a run that takes it again); other threads
and processes are excluded. Only the global-zero process of a multi-process (DDP) run locks: the
other ranks of the same run write into the folder under rank zero's lock. A folder the lock
created is removed again if the run leaves nothing else in it; the lock file itself is removed
when the run ends.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from diffice.errors import UserError

LOCK_NAME = ".lock"
POLL_SECONDS = 0.2

_held: dict[tuple[int, str], int] = {}  # (thread id, lock path) -> nesting depth
_held_guard = threading.Lock()


def other_rank() -> bool:
    """True in a non-zero process of a multi-process run (the launchers' environment variables)."""
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(var, "").strip()
        if value not in ("", "0"):
            return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    return True


def read_holder(path: Path) -> dict:
    """What ``path`` (a lock file) says about its holder; {} when empty or unreadable."""
    try:
        data = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another process (it has not said which yet)"
    text = f"pid {holder['pid']} on {holder.get('host', '?')}"
    if holder.get("command"):
        text += f", {holder['command']}"
    if holder.get("started"):
        text += f", since {holder['started']}"
    return text


def _ended(holder: dict) -> bool:
    """The recorded holder is a process of this host that has ended."""
    try:
        pid = int(holder.get("pid") or 0)
    except (TypeError, ValueError):
        return False
    return pid > 0 and holder.get("host") == socket.gethostname() and not _pid_alive(pid)


def _held_by(holder: dict) -> str:
    """Who holds a lock we could not take, for the refusal: the recorded holder, or, when it has
    ended, the process it left behind (the flock is still held, so something of it still runs)."""
    if _ended(holder):
        return (f"{describe(holder)}, which has ended, but a process it started (a worker) still holds the lock "
                "and may still write; end that process")
    return describe(holder)


def _open_locked(path: Path, wait: bool, what: str) -> tuple[int, dict, bool]:
    """An fd of ``path`` holding an exclusive flock; the previous holder's info ({} if none);
    whether the folder had to be made again (a holder that made it removed it, empty, on leaving)."""
    announced, remade = False, False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            remade = True
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            # some live process holds the flock (the recorded holder, or a child it forked that
            # outlived it): never broken, whatever the file says
            holder = read_holder(path)
            if not wait:
                raise UserError(f"{path.parent}: in use by another run ({_held_by(holder)}); wait for it to finish, "
                                f"add --wait to wait for it, or choose another output folder") from None
            if not announced:
                print(f"{path.parent}: in use by {_held_by(holder)}; waiting for it to finish", file=sys.stderr)
                announced = True
            time.sleep(POLL_SECONDS)
            continue
        except BaseException:
            os.close(fd)
            raise
        # the file may have been removed (and replaced) by its last holder between our open and lock
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        return fd, read_holder(path), remade


@contextmanager
def run_lock(folder: str | os.PathLike, command: str, *, wait: bool = False) -> Iterator[Path]:
    """Hold ``{folder}/.lock`` for the block (see the module's docstring); yields ``folder``."""
    folder = Path(folder)
    if other_rank():
        yield folder
        return
    created = not folder.exists()
    top = folder  # the highest folder this call makes (parents too): removed again when left empty
    while not top.parent.exists():
        top = top.parent
    if created:
        folder.mkdir(parents=True, exist_ok=True)
    elif not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    path = folder / LOCK_NAME
    key = (threading.get_ident(), str(path.resolve()))
    with _held_guard:
        depth = _held.get(key, 0)
        if depth:
            _held[key] = depth + 1
    if depth:  # this thread holds it already
        try:
            yield folder
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    try:
        fd, previous, remade = _open_locked(path, wait, command)
        created = created or remade
    except BaseException:
        if created:
            _remove_if_empty(folder, top)
        raise
    if previous.get("pid") and int(previous["pid"]) != os.getpid():
        print(f"note: {folder}: taking over from a run that ended without finishing ({describe(previous)})",
              file=sys.stderr)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    with _held_guard:
        _held[key] = 1
    try:
        yield folder
    finally:
        with _held_guard:
            _held.pop(key, None)
        try:
            path.unlink()  # before unlocking: a waiter re-opens the path and checks it is the same file
        except FileNotFoundError:
            pass
        os.close(fd)
        if created:
            _remove_if_empty(folder, top)


def _remove_if_empty(folder: Path, top: Path | None = None) -> None:
    """Remove ``folder`` (and its parents up to ``top``, which this lock made) when it is empty (our
    lock file removed): a command that failed before writing leaves nothing behind."""
    try:
        # the lock file is never removed here: ours is gone already, and one that is there belongs to
        # another run (which may have taken it a moment ago and not yet written its pid)
        folder.rmdir()  # only when empty
        d = folder
        while top is not None and d != top and d.parent.is_dir():
            d = d.parent
            d.rmdir()  # raises (and stops) at the first folder that holds something
    except OSError:
        pass
