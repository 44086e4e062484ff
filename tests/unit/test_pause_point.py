"""The fault tests' pause hook holds a process once: a step Prefect retries after the fault goes on."""

from __future__ import annotations

import threading
import time

from components.core import faults


def test_a_process_pauses_at_a_point_once(tmp_path, monkeypatch):
    marker = tmp_path / "paused"
    monkeypatch.setenv(faults.PAUSE_AT, "register")
    monkeypatch.setenv(faults.PAUSE_FILE, str(marker))
    monkeypatch.setattr(faults, "_paused", set())

    def let_go() -> None:  # the test harness: waits for the pause, then lets the run go on
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        marker.unlink()

    harness = threading.Thread(target=let_go)
    harness.start()
    faults.pause_point("register")
    harness.join()
    faults.pause_point("register")  # the retried step: no second pause, which nobody would end
    assert not marker.exists()
