"""Finishing a W&B run so that its local folder is complete when the call returns.

``run.finish()`` waits until W&B's service has *processed* the run's exit, but the service
writes the run's transaction log (``run-<id>.wandb``) through a buffer that it flushes when it
closes the run's stream, which it does after ``finish()`` has returned (the finish request is
sent without waiting for an answer; wandb 0.31). A reader of the offline run folder right after
``finish()`` could see a log that ends early: one test run in four missed the run's last
artifact this way. :func:`finish_run` therefore finishes the run and then waits until the log
holds the run's exit record. Records are written in order, so everything the run logged
precedes it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

# how long finish_run waits for W&B to write the exit record before it warns and goes on
FLUSH_TIMEOUT_S = 60.0


def has_exit_record(path: str | os.PathLike) -> bool:
    """Whether a ``.wandb`` transaction log holds an exit record (the run was finished and its
    log flushed up to there). False for a missing, empty or torn file."""
    from wandb.proto import wandb_internal_pb2 as pb

    from diffice.errors import UserError
    from diffice.tracking.offline import transaction_records

    path = Path(path)
    try:
        for data in transaction_records(path):
            rec = pb.Record()
            try:
                rec.ParseFromString(data)
            except Exception:  # noqa: BLE001 - a record still being written
                continue
            if rec.WhichOneof("record_type") == "exit":
                return True
    except (OSError, UserError):  # not there yet, or only part of its header
        return False
    return False


def wait_for_exit_record(path: str | os.PathLike, timeout: float = FLUSH_TIMEOUT_S, poll: float = 0.02) -> bool:
    """Wait until the transaction log at ``path`` holds its exit record; False after ``timeout``."""
    deadline = time.monotonic() + float(timeout)
    while True:
        if has_exit_record(path):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def finish_run(run, timeout: float = FLUSH_TIMEOUT_S) -> None:
    """``run.finish()``, then wait until its local transaction log is complete (see above).

    A run that was never written locally (``disabled`` mode) is only finished. If W&B does
    not complete the log within ``timeout`` seconds, a warning says so and the caller goes on."""
    settings = getattr(run, "settings", None)
    mode = str(getattr(settings, "mode", "") or "")
    log = None
    if settings is not None and mode not in ("disabled", "") and not getattr(run, "disabled", False):
        try:
            log = str(settings.sync_file)
        except Exception:  # noqa: BLE001 - a W&B without the setting: finish only
            log = None
    run.finish()
    if log is not None and not wait_for_exit_record(log, timeout):
        from diffice.tracking.runs import warn

        warn(f"W&B: {log} has no exit record {timeout:.0f} s after the run finished; the local run folder may be incomplete")
