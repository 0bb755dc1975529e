"""A real process holding an output folder's lock, for tests of what a second run
sees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HOLDER = """
import sys, time
from tasks.out_lock import hold_out_lock
with hold_out_lock(sys.argv[1], "autolabel label"):
    print("held", flush=True)
    time.sleep(60)
"""


def start_holder(out: Path) -> subprocess.Popen:
    """A process that holds the lock on ``out`` until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.strip() == "held", f"holder did not start: {line!r}"
    return proc
