"""Run every benchmark in bench/ in turn and print their output (`make bench`).

Each benchmark prints ratios measured within its own run; bench/RESULTS.md records the
numbers with the command and machine that produced them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"\n=== {script.name}", flush=True)
        code = subprocess.call([sys.executable, str(script)])
        if code:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
