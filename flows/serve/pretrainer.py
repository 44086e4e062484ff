"""The background pretrainer: self-supervised pretraining in a low-priority child process."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from components.core.params import Params
from flows.serve.processes import stop_child

log = logging.getLogger("flows.serve")


class Pretrainer:
    """Self-supervised pretraining in the background (`python -m flows.pretrain`): a child process at
    low priority with `pretrain.threads` torch threads, so it never holds up a pre-annotation refresh.
    Started when serving starts (it pretrains only if the pool grew, else exits) and whenever the
    project's task count grew by `pretrain.refresh_growth` since the last start."""

    NICE = 10

    def __init__(self, params_path: Path, params: Params):
        self.params_path, self.params = params_path, params
        self.process: subprocess.Popen | None = None
        self.started_at_tasks: int | None = None

    def maybe_start(self, task_count: int | None) -> None:
        """Start a pretraining child unless one runs, or the pool has not grown enough since the last."""
        if not self.params.pretrain.enabled or (self.process is not None and self.process.poll() is None):
            return
        if self.process is not None and self.process.returncode:
            log.error("The background pretraining failed (exit %d); details in the log file.", self.process.returncode)
        last = self.started_at_tasks
        if self.process is not None and (task_count is None or last is None or task_count <= last * (1 + self.params.pretrain.refresh_growth)):
            return
        env = {**os.environ, "OMP_NUM_THREADS": str(self.params.pretrain.threads)}
        self.process = subprocess.Popen(
            ["nice", "-n", str(self.NICE), sys.executable, "-m", "flows.pretrain", str(self.params_path)], env=env,
            stdin=subprocess.DEVNULL,
        )
        self.started_at_tasks = task_count

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_child(self.process)
