"""Diff-ICE and its baselines on plain tensors and modules (no Trainer): see ``engine``."""

from diffice.counterfactual.engine import (
    CounterfactualEngine,
    FrameResult,
    GuidanceLoss,
    default_perceptual_l2,
    guided_sample,
)
from diffice.counterfactual.seeding import frame_generators, frame_seed, randn_frames
from diffice.counterfactual.settings import METHODS, CFSettings
from diffice.counterfactual.sparse import SparseSettings

__all__ = [
    "METHODS",
    "CFSettings",
    "CounterfactualEngine",
    "FrameResult",
    "GuidanceLoss",
    "SparseSettings",
    "default_perceptual_l2",
    "frame_generators",
    "frame_seed",
    "guided_sample",
    "randn_frames",
]
