"""The child processes `flywheel serve` supervises, how long each gets to stop, and the warm worker's
side of the conversation (`Worker`: a request per line on one pipe, the reply on the other).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from components.core.errors import SETTINGS_EXIT, FlywheelError

GRACE_S = 6.0  # a child's own shutdown, before the rest is killed
STOP_S = 10.0  # the promise: serving has stopped this long after Ctrl-C or SIGTERM
DOWN_AFTER_S = 10.0  # Prefect unreachable this long pauses the runner
HEALTH_S = 5.0  # how often the runner's health is looked at
QUICK_EXITS = 3  # a runner that dies this many times in a row within a minute, with Prefect up, is a real error

log = logging.getLogger("flows.serve")


def stop_child(child: subprocess.Popen) -> None:
    """SIGTERM a child, then kill whatever of it and its children is still alive after GRACE_S."""
    try:
        tree = [child.pid, *(p.pid for p in psutil.Process(child.pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        tree = [child.pid]
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    for pid in tree:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    try:
        child.wait(timeout=STOP_S - GRACE_S)
    except subprocess.TimeoutExpired:
        log.warning("Process %d did not exit after SIGKILL.", child.pid)


class Worker:
    """The warm worker process (`flows.worker`): started once, restarted if it dies."""

    def __init__(self, params_path: Path, stopping: threading.Event):
        self.params_path = params_path
        self.stopping = stopping
        self.process: subprocess.Popen | None = None
        self.running: str | None = None
        self._to: Any = None
        self._from: Any = None

    def start(self) -> None:
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flows.worker", str(self.params_path), str(to_r), str(from_w)],
            pass_fds=(to_r, from_w), start_new_session=True,
        )
        os.close(to_r)
        os.close(from_w)
        self._to, self._from = os.fdopen(to_w, "w"), os.fdopen(from_r)
        ready = json.loads(self._from.readline() or "{}").get("ready")
        if not ready and not self.stopping.is_set():
            raise FlywheelError(f"The warm worker exited while starting (exit code {self.process.wait()}); see the log file.")

    def run(self, what: str, trigger: str) -> dict[str, Any]:
        """Run `what` ("iteration", "tidy" or "check") in the worker and wait for its reply."""
        if self.stopping.is_set():
            return {"ok": False, "error": "serving is stopping"}
        if self.process is None or self.process.poll() is not None:
            if self.process is not None:
                log.warning("The warm worker died (exit code %s): starting it again.", self.process.returncode)
            self.start()
        self.running = what
        if self.stopping.is_set():  # Ctrl-C between the check above and here: the handler saw nothing running
            self.running = None
            return {"ok": False, "error": "serving is stopping"}
        try:
            self._to.write(json.dumps({"run": what, "trigger": trigger}) + "\n")
            self._to.flush()
            line = self._from.readline()
        except BrokenPipeError:
            line = ""
        finally:
            self.running = None
        if not line:
            try:
                self.process.wait(timeout=STOP_S)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                self.kill()
            return {"ok": False, "error": f"the warm worker died during the {what} (exit code {self.process.returncode})"}  # type: ignore[union-attr]
        return json.loads(line)

    def yield_to_labels(self) -> None:
        """New labels arrived: a running tidy stops after its chunk, a label check after its fold."""
        if self.running in ("tidy", "check") and self.process is not None:
            self.process.send_signal(signal.SIGUSR1)

    def interrupt(self) -> None:
        """Stop a run in flight (SIGTERM), and kill the worker's whole process group GRACE_S later if
        it is still there (a flow run reporting its end to an unreachable server could take longer)."""
        if self.process is None or self.process.poll() is not None:
            return
        if self.running is not None:
            self.process.send_signal(signal.SIGTERM)
        timer = threading.Timer(GRACE_S, self.kill)
        timer.daemon = True
        timer.start()

    def kill(self) -> None:
        """SIGKILL the worker and anything it started (its own session)."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self._to.close()  # the worker's loop ends at EOF
            except BrokenPipeError:
                pass
            stop_child(self.process)


class MLBackend:
    """The ML backend child (`flows.ml_backend`): started once, started again when it exits, until serving stops."""

    RESTART_S = 5.0  # between an exit and the next start (a crash loop costs a line every few seconds, not a core)

    def __init__(self, params_path: Path, stopping: threading.Event):
        self.params_path = params_path
        self.stopping = stopping
        self.process: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="ml-backend")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        quick = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            self.process = subprocess.Popen([sys.executable, "-m", "flows.ml_backend", str(self.params_path)], start_new_session=True)
            code = self.process.wait()
            if self.stopping.is_set():
                return
            if code == SETTINGS_EXIT:  # it said why (a setting it cannot start with): starting it again would say it again
                log.error("The ML backend cannot start with params.yaml's assist settings (see the log file): serving goes on "
                          "without it; fix them and restart flywheel serve.")
                return
            quick = quick + 1 if time.monotonic() - started < 60 else 1
            if quick >= QUICK_EXITS:
                log.warning("The ML backend exited %d times within a minute of starting (exit code %s): serving goes on without "
                            "it (Label Studio's smart tools and Retrieve predictions); see the log file.", quick, code)
                return
            log.warning("The ML backend exited (exit code %s): starting it again in %.0f s (see the log file).", code, self.RESTART_S)
            self.stopping.wait(self.RESTART_S)

    def stop(self) -> None:
        """Stop the child (serving is stopping: `stopping` is set, so it is not started again)."""
        if self.process is not None and self.process.poll() is None:
            stop_child(self.process)
        self._thread.join(timeout=GRACE_S)
