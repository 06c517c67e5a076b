"""W&B helpers (imported by the layers above ``tracking``: modules, report, synthesis, experiments): runs, picture tables that survive offline, artifacts with
lineage, and a reader of an offline run's own files.

Offline is diffice's default (``wandb.mode``). Two W&B behaviours shape this module:

* An offline run writes a ``wandb.Table`` logged with ``run.log`` as JSON whose picture cells
  hold the word ``"Image"`` and no image file (wandb/wandb#4611). A table added to an
  **Artifact** keeps its pictures: the artifact's manifest names ``media/images/<hash>.png``
  entries and the table's cells reference them. :func:`log_picture_table` logs that form, and
  also each picture column as an image list in the run's history (``files/media/images``).
* ``run.use_artifact`` refuses offline runs. Offline, :func:`use_artifact` logs the artifact
  with ``use_after_commit`` (what ``use_artifact`` does online with a draft artifact): the
  transaction log records it as used by the run, and ``wandb sync`` replays it.

Artifact files are staged (copied) by W&B under ``$WANDB_DATA_DIR/artifacts/staging``, by
default in the home folder. :func:`staged_in_run` points staging at the run's own folder
(``<offline-run-…>/artifacts/staging``), so a run folder holds every file its artifacts need
until it is synced. Checkpoints are never copied: model artifacts are *reference* artifacts
(``file://`` with the file's MD5 digest).

Nothing here imports ``wandb`` unless a run is being made (``wandb.mode=disabled`` imports and
writes nothing), and nothing contacts the network unless the mode is ``online``.

Modules::

    runs        wandb_mode, wandb_group, init_run, the run's folder, staging in it, warn
    pictures    log_picture_table (picture tables that survive offline)
    artifacts   model / dataset / outputs artifacts, use_checkpoint, use_dataset
    offline     read_offline_run, check_offline_run (``diffice wandb-check``), offline_runs
    finish      finish_run: run.finish(), then wait until the run's log holds its exit record
"""

from diffice.tracking.artifacts import (
    checkpoint_facts,
    config_digest,
    dataset_artifact,
    dataset_description,
    log_model_artifact,
    log_outputs_artifact,
    model_artifact,
    use_artifact,
    use_checkpoint,
    use_dataset,
)
from diffice.tracking.finish import finish_run, has_exit_record, wait_for_exit_record
from diffice.tracking.offline import check_offline_run, offline_runs, read_offline_run, transaction_records
from diffice.tracking.pictures import log_picture_table, to_wandb_image
from diffice.tracking.runs import (
    MODEL_KINDS,
    init_run,
    is_offline,
    run_folder,
    slug,
    staged_in_run,
    wandb_group,
    wandb_mode,
    warn,
)

__all__ = [
    "MODEL_KINDS", "check_offline_run", "checkpoint_facts", "config_digest", "dataset_artifact", "dataset_description",
    "finish_run", "has_exit_record", "init_run", "is_offline", "log_model_artifact", "log_outputs_artifact",
    "log_picture_table", "model_artifact", "offline_runs", "read_offline_run", "run_folder", "slug", "staged_in_run",
    "to_wandb_image", "transaction_records", "use_artifact", "use_checkpoint", "use_dataset", "wait_for_exit_record",
    "wandb_group", "wandb_mode", "warn",
]
