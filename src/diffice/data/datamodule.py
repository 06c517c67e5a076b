"""The LightningDataModule over every kind of data: phantom, manifest CSV, HC18, FETAL_PLANES_DB.

``DiffIceDataModule(cfg)`` reads ``cfg.data`` and ``cfg.seed``. ``data.source``:

* ``phantom`` — rendered on the fly at ``data.image_size`` (``data.phantom.*``); with
  ``data.root`` set, the set written there by ``diffice phantoms`` (its ``manifest.csv``);
* ``manifest`` — the CSV ``data.manifest`` (DESIGN.md contract);
* ``hc18`` — the HC18 challenge layout under ``data.root``;
* ``fpdb`` — FETAL_PLANES_DB under ``data.root``.

Loading (:func:`loader_options`): ``data.num_workers`` worker processes, or with ``null`` (the
default) none on the CPU and a few per device on a GPU; pinned memory on CUDA only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from diffice.data.datasets import (
    FrameDataset,
    FrameSource,
    PhantomSource,
    RecordSource,
    root_path,
    select,
)
from diffice.data.sources import fpdb_records, hc18_records, read_manifest
from diffice.errors import UserError

SOURCES = ("phantom", "manifest", "hc18", "fpdb")


def build_source(cfg: DictConfig) -> FrameSource:
    """The full ("all") data set named by ``cfg.data``."""
    d = cfg.data
    common = {
        "concepts": list(d.concepts),
        "classes": list(d.classes),
        "split_fractions": list(d.split_fractions),
        "split_seed": int(d.split_seed),
    }
    labelled = {"labelled": None if d.get("labelled") is None else int(d.labelled), "labelled_seed": int(d.get("labelled_seed", 0))}
    if len(d.image_size) != 2 or min(d.image_size) < 8:
        raise UserError(f"data.image_size must be [height, width] of at least 8 pixels, got {list(d.image_size)}")
    if d.source == "phantom":
        if d.root:
            root = root_path(d.root, "phantom")
            csv = root / "manifest.csv" if root.is_dir() else root
            return RecordSource("phantom", read_manifest(csv), origin=str(csv), **common, **labelled)
        if labelled["labelled"] is not None:
            raise UserError("data.labelled: the on-the-fly phantom has no annotation files to withhold; write it first "
                            "(diffice phantoms) and set data.root, or use a manifest")
        p = d.phantom
        return PhantomSource(int(p.count), list(d.image_size), int(p.seed), float(p.sp_fraction),
                             int(p.frames_per_patient), **common)
    if d.source == "manifest":
        if not d.manifest:
            raise UserError("data.manifest is required for data.source=manifest; set data.manifest=PATH/manifest.csv")
        return RecordSource("manifest", read_manifest(Path(d.manifest)), origin=str(d.manifest), **common, **labelled)
    if d.source == "hc18":
        root = root_path(d.root, "hc18")
        return RecordSource("hc18", hc18_records(root), origin=str(root), **common, **labelled)
    if d.source == "fpdb":
        root = root_path(d.root, "fpdb")
        return RecordSource("fpdb", fpdb_records(root), carve_validation=True, origin=str(root), **common, **labelled)
    raise UserError(f"data.source '{d.source}' is not one of {', '.join(SOURCES)}")


GPU_WORKERS = 4  # worker processes per device when data.num_workers is null and the frames go to a GPU


def loader_options(cfg: DictConfig, trainer: Any = None) -> dict[str, Any]:
    """DataLoader workers and pinning for the device ``trainer`` computes on (no trainer: the CPU).

    ``data.num_workers`` when set. ``null``: on the CPU none (the training process makes each batch
    between its steps, on the cores it computes with); on a GPU ``min(4, CPUs per device process)``
    workers, so that the next batches are made while the GPU computes. ``pin_memory`` on CUDA only.
    Workers change neither the training order nor its augmentations: both come from
    :class:`ResumableSampler` (seed, step), which runs in the training process."""
    strategy = getattr(trainer, "strategy", None)
    device = getattr(getattr(strategy, "root_device", None), "type", "cpu")
    cuda = device == "cuda"
    workers = cfg.data.num_workers
    if workers is None:
        per_device = (os.cpu_count() or 1) // max(1, int(getattr(trainer, "num_devices", 1) or 1))
        workers = min(GPU_WORKERS, max(1, per_device)) if cuda else 0
    workers = int(workers)
    return {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": cuda}


class ResumableSampler(Sampler):
    """The training order as a function of (seed, batch position) alone, so that a resumed run
    continues exactly where the killed one stopped.

    Epoch ``e``'s order is a permutation drawn from a generator seeded by (seed, e), with one
    augmentation seed per position; rank ``r`` of ``W`` takes positions ``r, r + W, ...``. Each
    ``iter()`` starts at the batch ``position()`` returns (the trainer's optimizer step: batches
    already trained) and yields ``(index, augmentation seed)`` pairs up to the end of that
    epoch, so a run resumed mid-epoch skips the batches it has trained and then goes on to the
    next epoch's order, as an uninterrupted run does. With ``accumulate`` batches per optimizer step
    (``trainer.accumulate_grad_batches``) a step is that many batches (the last step of an epoch may
    have fewer: Lightning steps at the end of each epoch). Training Trainers run with
    ``use_distributed_sampler=False`` so that Lightning keeps it under DDP.
    """

    def __init__(self, n: int, batch_size: int, seed: int, position: Callable[[], int] = lambda: 0,
                 num_replicas: int = 1, rank: int = 0, accumulate: int = 1):
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.accumulate = max(1, int(accumulate))
        self.position = position
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.per_rank = self.n // self.num_replicas
        self.drop_last = self.per_rank >= self.batch_size
        self.batches = self.per_rank // self.batch_size if self.drop_last else 1
        self.epoch = 0

    def __len__(self) -> int:
        return self.batches * self.batch_size if self.drop_last else self.per_rank

    def set_epoch(self, epoch: int) -> None:  # Lightning's epoch count is not used: see position()
        self.epoch = int(epoch)

    def order(self, epoch: int) -> tuple[list[int], list[int]]:
        """This rank's positions and augmentation seeds of ``epoch``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * int(epoch) + 1)
        perm = torch.randperm(self.n, generator=g)
        seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=g)
        take = slice(self.rank, self.per_rank * self.num_replicas, self.num_replicas)
        return perm[take].tolist(), seeds[take].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step = max(0, int(self.position()))
        epoch, skip = divmod(step, -(-self.batches // self.accumulate))  # optimizer steps per epoch
        perm, seeds = self.order(epoch)
        start = skip * self.accumulate * self.batch_size
        return iter(list(zip(perm[start : len(self)], seeds[start : len(self)], strict=True)))


class ResumableLoader(DataLoader):
    """The training DataLoader, which tells Lightning it resumes exactly: its position is
    :class:`ResumableSampler`'s, a function of the trainer's step, so it has no state of its own
    to save (without these two methods Lightning warns on every mid-epoch resume that the loader
    "is not resumable")."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


class DiffIceDataModule(L.LightningDataModule):
    """Train / val / test loaders over the configured data; ``dataset(split, label, augment)``
    gives any view (split in train | val | test | all, label in SP | NSP | None)."""

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.cfg = cfg
        self.source: FrameSource | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.source is None:
            self.source = build_source(self.cfg)

    def dataset(self, split: str = "all", label: str | None = None, augment: bool = False) -> FrameDataset:
        self.setup()
        idx = select(self.source, split, label)
        return FrameDataset(self.source, idx, list(self.cfg.data.image_size), augment=augment, split=split, label=label)

    def loader(self, ds: FrameDataset, shuffle: bool) -> DataLoader:
        """A DataLoader of ``ds`` at ``data.batch_size``, workers and pinning by :func:`loader_options`."""
        if len(ds) == 0:
            raise UserError(f"data ({self.source.name}): split '{ds.split}' is empty; check data.split_fractions and the data set size")
        bs = int(self.cfg.data.batch_size)
        trainer, sampler = self.trainer, None
        if trainer is not None and trainer.world_size > 1 and not shuffle:
            # as Lightning would (training Trainers do not let it: use_distributed_sampler=False): the frames
            # dealt out in turn, the last round padded by repeats (DifficeModule.pool_frames drops them)
            sampler = DistributedSampler(ds, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)
        return DataLoader(ds, batch_size=bs, shuffle=shuffle, drop_last=shuffle and len(ds) >= bs, sampler=sampler,
                          **loader_options(self.cfg, trainer))

    def train_dataloader(self) -> DataLoader:
        """The training order is :class:`ResumableSampler`'s: a function of (seed, step), so a
        resumed run continues it (and its augmentations) where the killed run stopped."""
        ds = self.dataset("train", augment=bool(self.cfg.data.augment))
        if len(ds) == 0:
            return self.loader(ds, shuffle=True)  # the one-line "split is empty" error
        trainer = self.trainer
        sampler = ResumableSampler(
            len(ds), int(self.cfg.data.batch_size), int(self.cfg.seed),
            position=(lambda: int(trainer.global_step)) if trainer is not None else (lambda: 0),
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            accumulate=trainer.accumulate_grad_batches if trainer is not None else 1,
        )
        return ResumableLoader(ds, batch_size=int(self.cfg.data.batch_size), sampler=sampler, drop_last=sampler.drop_last,
                               **loader_options(self.cfg, trainer))

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.dataset("val"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.dataset("test"), shuffle=False)
