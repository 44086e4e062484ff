"""A hook for fault tests: pause a run at a named point so a test can kill it exactly there.

Does nothing unless the environment names the point (`FLYWHEEL_PAUSE_AT=write-back`). Then the
process writes its pid to `FLYWHEEL_PAUSE_FILE` and waits until that file is removed (the test lets
it go on) or the process is killed (the test's fault), for at most ten minutes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_AT = "FLYWHEEL_PAUSE_AT"
PAUSE_FILE = "FLYWHEEL_PAUSE_FILE"


def pause_point(name: str) -> None:
    """Wait here if a fault test asked to (see the module docstring)."""
    if os.environ.get(PAUSE_AT) != name or not os.environ.get(PAUSE_FILE):
        return
    marker = Path(os.environ[PAUSE_FILE])
    marker.write_text(str(os.getpid()))
    deadline = time.monotonic() + 600
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
