"""SIGTERM stops a diffice process like Ctrl-C: a clear line and status 130, not a hang."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

SLOW_COMMAND = """
import sys, time
import diffice.cli as cli

def slow(args):
    print("ready", flush=True)
    time.sleep(60)
    return 0

sys.modules["slowmod"] = sys.modules[__name__]
cli.COMMANDS["slow"] = ("slowmod:slow", "sleeps")
sys.argv = ["diffice", "slow"]
sys.exit(cli.main())
"""


def test_sigterm_interrupts_a_running_command():
    proc = subprocess.Popen([sys.executable, "-c", SLOW_COMMAND], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert time.monotonic() - start < 30
    assert "diffice slow: interrupted; finished work is kept and a rerun resumes it" in err
