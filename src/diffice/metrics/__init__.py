"""diffice.metrics: torchmetrics Metrics for counterfactual realism, validity and efficiency.

Every metric keeps its state as torchmetrics states with a ``dist_reduce_fx``, so it is
synchronised across processes under DDP (and can be merged with ``merge_state``).
"""

from diffice.metrics.efficiency import (
    Efficiency,
    Stopwatch,
    device_synchronize,
    peak_memory_bytes,
    reset_peak_memory,
)
from diffice.metrics.frechet import FrechetDistance, frechet_distance, gaussian_stats
from diffice.metrics.similarity import SonoSim
from diffice.metrics.target import TargetDistance, target_l1
from diffice.metrics.validity import OracleQuality, Validity

__all__ = [
    "Efficiency",
    "FrechetDistance",
    "OracleQuality",
    "SonoSim",
    "Stopwatch",
    "TargetDistance",
    "Validity",
    "device_synchronize",
    "frechet_distance",
    "gaussian_stats",
    "peak_memory_bytes",
    "reset_peak_memory",
    "target_l1",
]
