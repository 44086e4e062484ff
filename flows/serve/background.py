"""Training in the background: low-priority child processes that never hold up a pre-annotation refresh.

`Pretrainer`: self-supervised pretraining of the backbone on every image (`python -m flows.pretrain`).
`Retrainer`: the loop's model from scratch, each time the labeled set grew by `retrain.growth`
(`python -m flows.retrain`). Both wait between their batches while an iteration runs (`refreshing`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from components.core.params import Params
from flows.serve.processes import stop_child

log = logging.getLogger("flows.serve")

NICE = 10


class Background:
    """One child process at a time: `python -m MODULE PARAMS` at low priority with `threads` torch threads."""

    def __init__(self, module: str, what: str, params_path: Path, threads: int):
        self.module, self.what, self.params_path, self.threads = module, what, params_path, threads
        self.process: subprocess.Popen | None = None
        self.failure_told = False

    def running(self) -> bool:
        """Whether the child runs; says so once when it failed."""
        if self.process is None or self.process.poll() is None:
            return self.process is not None
        if self.process.returncode and not self.failure_told:
            log.error("The background %s failed (exit %d); details in the log file.", self.what, self.process.returncode)
            self.failure_told = True
        return False

    def start(self) -> None:
        """Start the child unless one runs."""
        if self.running():
            return
        self.failure_told = False
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        self.process = subprocess.Popen(
            ["nice", "-n", str(NICE), sys.executable, "-m", self.module, str(self.params_path)], env=env,
            stdin=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        """Stop the child if it runs."""
        if self.running():
            stop_child(self.process)  # type: ignore[arg-type]


class Pretrainer(Background):
    """Self-supervised pretraining in the background, with `pretrain.threads` torch threads. Started when
    serving starts (it pretrains only if the pool grew, else exits) and whenever the project's task count
    grew by `pretrain.refresh_growth` since the last start."""

    def __init__(self, params_path: Path, params: Params):
        super().__init__("flows.pretrain", "pretraining", params_path, params.pretrain.threads)
        self.params = params
        self.started_at_tasks: int | None = None

    def maybe_start(self, task_count: int | None) -> None:
        """Start a pretraining child unless one runs, or the pool has not grown enough since the last."""
        if not self.params.pretrain.enabled or self.running():
            return
        last = self.started_at_tasks
        if self.process is not None and (task_count is None or last is None or task_count <= last * (1 + self.params.pretrain.refresh_growth)):
            return
        self.start()
        self.started_at_tasks = task_count


class Retrainer(Background):
    """The loop's model from scratch in the background, with `retrain.threads` torch threads: started when an
    iteration reports it due (`retrain_due` in its summary: the labeled set grew by `retrain.growth` since the
    newest model from scratch). The child checks again, trains, registers, and lets the judge decide; when it
    ended well, `finished` says so once (an iteration then writes a new champion's pre-annotations). After a
    failure, no new start for `BACKOFF_S`."""

    BACKOFF_S = 900.0

    def __init__(self, params_path: Path, params: Params):
        super().__init__("flows.retrain", "retrain", params_path, params.retrain.threads)
        self.params = params
        self.retry_at = 0.0
        self.ended_told = True

    def maybe_start(self) -> None:
        """Start the child unless the retrain is off, one runs, or the last one failed less than `BACKOFF_S` ago."""
        if not self.params.retrain.growth or self.running() or time.monotonic() < self.retry_at:
            return
        self.start()
        self.ended_told = False

    def finished(self) -> bool:
        """True once after a child ended well; after a failure, False and the back-off starts."""
        if self.running() or self.process is None or self.ended_told:
            return False
        self.ended_told = True
        if self.process.returncode:
            self.retry_at = time.monotonic() + self.BACKOFF_S
            return False
        return True
