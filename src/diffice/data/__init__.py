"""diffice.data: the phantom simulator, manifest datasets and adapters, transforms, DataModule.

Public API::

    DiffIceDataModule(cfg)              # setup(), train/val/test_dataloader(), dataset(split, label, augment)
    build_source(cfg)                   # the full data set named by cfg.data
    loader_options(cfg, trainer)        # DataLoader workers and pinning for the trainer's device
    require_labels(dataset, split)      # UserError unless the split holds SP and NSP frames
    render_frame(index, size, seed, ...)  # one phantom frame with mask, concepts, label and target
"""

from diffice.data.datamodule import DiffIceDataModule, build_source, loader_options
from diffice.data.datasets import FrameDataset, require_labels, select
from diffice.data.phantom import CLASSES, CONCEPTS, render_frame

__all__ = [
    "CLASSES",
    "CONCEPTS",
    "DiffIceDataModule",
    "FrameDataset",
    "build_source",
    "loader_options",
    "render_frame",
    "require_labels",
    "select",
]
