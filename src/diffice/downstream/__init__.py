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

The head-measurement study on real labels (the project's segmenter on N real labelled heads, with
and without synthetic image–mask pairs; ``kind: segmentation_downstream``,
:mod:`diffice.experiments.seg_downstream`):

* :mod:`~diffice.downstream.seg_train` — the segmenter by a seeded torch loop with the ``data.augment``
  transforms, its masks, per-frame head Dice and HC error;
* :mod:`~diffice.downstream.seg_study` — :func:`~diffice.downstream.seg_study.run_seg_study` (N × seed
  × arm trainings, resumable per-frame ``rows.csv``) and the synthetic folders of each draw;
* :mod:`~diffice.downstream.seg_table` — per-arm means and paired differences (``summary.csv``, ``table.md``).
"""

from diffice.downstream.frames import FrameSet, load_manifest, load_synthesis_run
from diffice.downstream.study import run_study
from diffice.downstream.table import write_table

__all__ = ["FrameSet", "load_manifest", "load_synthesis_run", "run_study", "write_table"]
