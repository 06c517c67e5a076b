"""What a resumed training stage shows and logs: one W&B run across resumes, a step-based bar.

* **W&B run id**: a stage's run id is kept in ``{run}/.wandb-run-id``; a stage resumed from
  ``last.ckpt`` passes it to ``wandb.init`` (``id=..., resume="allow"``), so the resumed training
  continues the same W&B run (offline: a new offline folder of the same run id, which ``wandb
  sync`` appends to that run) instead of starting a new one. A fresh stage (no ``last.ckpt``)
  gets a new id.
* **Progress bar**: training is bounded by steps (``max_epochs=-1``), so Lightning's "Epoch N/-2"
  becomes "Epoch N, to step S".
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import RichProgressBar

RUN_ID_FILE = ".wandb-run-id"


def wandb_run_id(out: Path, resuming: bool) -> str:
    """The stage's W&B run id: the stored one when resuming, else a new one (stored by rank zero)."""
    from diffice.io import atomic_write_text
    from diffice.runlock import other_rank

    path = Path(out) / RUN_ID_FILE
    if resuming and path.is_file():
        stored = path.read_text().strip()
        if stored.isalnum():
            return stored
    import secrets
    import string

    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id alphabet
    if not other_rank():
        atomic_write_text(path, run_id + "\n")
    return run_id


class StepsProgressBar(RichProgressBar):
    """Lightning's rich bar, described by the step training stops at instead of "Epoch N/-2"."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_epochs not in (None, -1) or not trainer.max_steps or trainer.max_steps < 0:
            return super()._get_train_description(current_epoch)
        text = f"Epoch {current_epoch}, to step {trainer.max_steps}"
        return f"{text:{len(self.validation_description)}}" if len(self.validation_description) > len(text) else text
