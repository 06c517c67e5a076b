"""Downstream study (FetalFlex part 2): do synthetic frames help ordinary classifiers?

Beside ``counterfactual/`` and ``synthesis/``, on plain tensors and timm networks (no Lightning):

* :mod:`~diffice.downstream.frames` — :class:`FrameSet` (uint8 frames with plane, anomaly, origin
  and id), read from a manifest CSV or a synthesis run folder;
* :mod:`~diffice.downstream.train` — a timm classifier trained from scratch (never downloaded
  weights) by a plain, seeded torch loop, and batched prediction;
* :mod:`~diffice.downstream.metrics` — per-anomaly AUROC, mean ± sd over seeds (accuracy, balanced
  accuracy and exact AUROC are :mod:`diffice.metrics.classification`'s);
* :mod:`~diffice.downstream.study` — :func:`run_study` (model × seed × condition rows, resumable
  ``rows.csv``, the run-folder stamp of its settings);
* :mod:`~diffice.downstream.rows` — reading ``rows.csv`` back, row by row checked;
* :mod:`~diffice.downstream.table` — ``summary.csv`` and :func:`write_table` (``table.md``).

The ``kind: downstream`` experiment that makes the frame sets is :mod:`diffice.experiments.downstream`.
"""

from diffice.downstream.frames import FrameSet, load_manifest, load_synthesis_run
from diffice.downstream.study import run_study
from diffice.downstream.table import write_table

__all__ = ["FrameSet", "load_manifest", "load_synthesis_run", "run_study", "write_table"]
