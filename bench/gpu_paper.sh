#!/usr/bin/env bash
# The paper's setting on one CUDA GPU in one call (issue 28): Diff-ICE at 224x288, tau 120 of 400,
# L = 5, the default perceptual network, fp32 (TF32 off) vs bf16, with and without torch.compile;
# each row into bench/RESULTS.md (and --rows FILE, JSON lines) as soon as it is measured.
# Without a GPU it says so in one line and exits 0; with a GPU torch cannot use, one line and exit 2.
# Usage: bench/gpu_paper.sh [--rows FILE] [--steps 4] [--no-compile]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
exec timeout 480 "$PY" bench/gpu_paper.py "$@"
