"""Prefect's runner for the rare, long run (the full retrain on `retrain.cron`): the deployment it
serves (`serve_deployments`, the child's work: `python -m flows.serve PARAMS`) and its supervision
(`Runner`: paused while Prefect does not answer, restarted when it exits).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

from components.adapters.stack import is_healthy
from components.core.params import Params
from flows.serve.processes import DOWN_AFTER_S, HEALTH_S, QUICK_EXITS, stop_child

log = logging.getLogger("flows.serve")


def serve_deployments(params: Params, params_path: Path) -> None:
    """Register the full retrain's deployment and serve it until interrupted (the runner child's work)."""
    from prefect import serve as prefect_serve

    from flows.retrain import retrain

    parameters = {"params_path": str(params_path.resolve())}
    prefect_serve(
        retrain.to_deployment(name="retrain", cron=params.retrain.cron, parameters=parameters, concurrency_limit=1),
        print_starting_message=False,
    )


class Runner(threading.Thread):
    """Prefect's runner for the scheduled full retrain, supervised in a thread: paused while Prefect
    does not answer, restarted when it exits."""

    def __init__(self, params_path: Path, prefect_health_url: str, stopping: threading.Event):
        super().__init__(name="prefect-runner", daemon=True)
        self.params_path = params_path
        self.health_url = prefect_health_url
        self.stopping = stopping
        self.failed = False

    def run(self) -> None:
        quick_exits = 0
        while not self.stopping.is_set():
            if not is_healthy(self.health_url):
                log.warning("Prefect at %s does not answer: the scheduled runs pause until it does (start it with "
                            "`flywheel stack up`).", self.health_url.removesuffix("/api/health"))
                while not self.stopping.wait(HEALTH_S) and not is_healthy(self.health_url):
                    pass
                if self.stopping.is_set():
                    break
                log.info("Prefect answers again: the scheduled runs resume.")
            started = time.monotonic()
            child = subprocess.Popen([sys.executable, "-m", "flows.serve", str(self.params_path)], start_new_session=True)
            unhealthy_since: float | None = None
            while child.poll() is None and not self.stopping.wait(HEALTH_S):
                if is_healthy(self.health_url):
                    unhealthy_since = None
                elif unhealthy_since is None:
                    unhealthy_since = time.monotonic()
                elif time.monotonic() - unhealthy_since > DOWN_AFTER_S:
                    break  # the check above says so, once, and waits
            if child.poll() is None:
                stop_child(child)
                continue
            quick_exits = quick_exits + 1 if time.monotonic() - started < 60 else 1
            if quick_exits >= QUICK_EXITS and is_healthy(self.health_url):
                log.error("The scheduled runs stopped %d times in a row (exit code %s); see the log file.", quick_exits, child.returncode)
                self.failed = True
                self.stopping.set()
