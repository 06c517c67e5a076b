"""diffice.report: a counterfactual run's results.csv, metrics.json, report.html, W&B, reader study.

Sits beside ``commands`` in the layers (it rebuilds networks through ``diffice.modules``).
"""

from diffice.report.finalize import finalize_run, read_run_config

__all__ = ["finalize_run", "read_run_config"]
