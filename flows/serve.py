"""Serve the deployments (polling on an interval, the full retrain on a cron, the label error check on
its own slower interval) under a small supervisor.

Prefect's runner serves in a child process (`python -m flows.serve PARAMS`); this process watches it:

- Ctrl-C or SIGTERM stops serving within `STOP_S` seconds whatever state the servers are in: the
  runner gets SIGTERM (it pauses the schedules and ends its runs), and whatever is left after
  `GRACE_S` is killed. A run killed that way is closed by the next run (see `flows.common`).
- When Prefect's server stops answering, serving pauses with one line saying so, and resumes when it
  answers again, instead of the runner's error loop.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from components.params import Params, load_params
from components.stack import is_healthy

GRACE_S = 6.0  # the runner's own shutdown, before the rest is killed
STOP_S = 10.0  # the promise: serving has stopped this long after Ctrl-C or SIGTERM
DOWN_AFTER_S = 10.0  # Prefect unreachable this long pauses serving
QUICK_EXITS = 3  # a runner that dies this many times in a row within a minute, with Prefect up, is a real error

log = logging.getLogger(__name__)


def serve_deployments(params: Params, params_path: Path) -> None:
    """Register the deployments and serve them until interrupted (the child process's work)."""
    from prefect import serve as prefect_serve

    from flows.flywheel import flywheel_iteration
    from flows.label_errors import find_label_errors
    from flows.retrain import retrain

    parameters = {"params_path": str(params_path.resolve())}
    prefect_serve(
        flywheel_iteration.to_deployment(
            name="poll", interval=params.poll.interval_s, parameters=parameters, concurrency_limit=1
        ),
        retrain.to_deployment(name="retrain", cron=params.retrain.cron, parameters=parameters, concurrency_limit=1),
        find_label_errors.to_deployment(
            name="label-errors", interval=params.errors.interval_s, parameters=parameters, concurrency_limit=1
        ),
        print_starting_message=False,
    )


def _stop(child: subprocess.Popen) -> None:
    """SIGTERM the runner, then kill whatever of it and its flow runs is still alive after GRACE_S."""
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
        log.warning("The runner (pid %d) did not exit after SIGKILL.", child.pid)


def serve(params: Params, params_path: Path, prefect_health_url: str) -> int:
    """Serve under supervision until Ctrl-C or SIGTERM. Returns the exit code."""
    stopping = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    quick_exits = 0
    while not stopping.is_set():
        if not is_healthy(prefect_health_url):
            log.warning("Prefect at %s does not answer: serving pauses until it does (start it with `flywheel stack up`).",
                        prefect_health_url.removesuffix("/health"))
            while not stopping.wait(2) and not is_healthy(prefect_health_url):
                pass
            if stopping.is_set():
                break
            log.info("Prefect answers again: serving.")
        started = time.monotonic()
        child = subprocess.Popen([sys.executable, "-m", "flows.serve", str(params_path)], start_new_session=True)
        unhealthy_since: float | None = None
        while child.poll() is None and not stopping.wait(1):
            if is_healthy(prefect_health_url):
                unhealthy_since = None
            elif unhealthy_since is None:
                unhealthy_since = time.monotonic()
            elif time.monotonic() - unhealthy_since > DOWN_AFTER_S:
                break  # the check above says so, once, and waits
        if child.poll() is None:
            _stop(child)
            continue
        quick_exits = quick_exits + 1 if time.monotonic() - started < 60 else 1
        if quick_exits >= QUICK_EXITS and is_healthy(prefect_health_url):
            log.error("Serving stopped %d times in a row (exit code %s); see the log file.", quick_exits, child.returncode)
            return 1
    log.info("Serving stopped.")
    return 0


if __name__ == "__main__":
    path = Path(sys.argv[1])
    serve_deployments(load_params(path), path)
