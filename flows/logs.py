"""What reaches the terminal: one line per thing that matters. Everything, tracebacks included, goes
to the workspace's log file (and Prefect's own run logs stay in the Prefect UI).

Prefect reads `flows/logging.yml` (through PREFECT_LOGGING_SETTINGS_PATH, which the CLI sets before
Prefect is imported), so the CLI and every flow-run process that `flywheel serve` starts log alike.
`--verbose` (FLYWHEEL_VERBOSE=1) shows every record with its traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from components.core.errors import FlywheelError
from components.core.settings import LOG_FILE_ENV

LOG_FILE = LOG_FILE_ENV
VERBOSE = "FLYWHEEL_VERBOSE"
OURS = ("components", "flows", "bench")
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")  # their failures are reported once, by the CLI or a hook
TRACEBACKS = "flywheel.tracebacks"  # the log file's copy of a failure the terminal shows in one line
SETTINGS_PATH = Path(__file__).with_name("logging.yml")


# Libraries that may print through handlers of their own: MLflow configures its loggers when it is
# imported (unless MLFLOW_CONFIGURE_LOGGING=false was set before), Lightning when the root logger has no
# handler yet. `adopt_library_loggers` sends them through flywheel's handlers instead.
LIBRARY_LOGGERS = ("mlflow", "lightning", "lightning.pytorch", "lightning.fabric")


def setup() -> None:
    """This process's logging: flywheel's two handlers on the root logger (`Terminal`, `WorkspaceFile`),
    installed before a library installs its own: MLflow's pytorch flavor calls `logging.basicConfig`
    when imported, and Prefect then leaves a root logger that has a handler alone, so a process that
    imported the loop before Prefect printed every library's INFO in Python's default format (the warm
    worker under `flywheel serve` did). Called first by the CLI and by each child process's entry point."""
    logging.basicConfig(level=logging.INFO, handlers=[Terminal(), WorkspaceFile()], force=True)
    logging.raiseExceptions = False  # a failing handler (Prefect's log shipper, its server down) stays quiet
    adopt_library_loggers()


def adopt_library_loggers() -> None:
    """Route the libraries' records through flywheel's handlers (their INFO to the log file only, a
    warning once to the terminal), whichever was imported before logging was set up."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def verbose() -> bool:
    return os.environ.get(VERBOSE, "") not in ("", "0", "false")


class Terminal(logging.StreamHandler):
    """stderr: our own messages, other libraries' warnings and errors; one line each, no traceback.
    A library's warning is shown the first time only (a served loop would repeat it every
    iteration); its repeats, like everything, are in the log file."""

    PREFIX = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self._warned: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if verbose():
            return record.levelno >= logging.INFO
        if record.name == TRACEBACKS:
            return False
        if record.name.startswith(OURS):
            return record.levelno >= logging.INFO
        if record.levelno < logging.WARNING or record.name.startswith((*RUN_LOGGERS, "py.warnings")):
            return False
        if record.levelno == logging.WARNING:
            seen = (record.name, (record.getMessage().splitlines() or [""])[0])
            if seen in self._warned:
                return False
            self._warned.add(seen)
        return True

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(record.created))
        if verbose():
            return f"{when} {record.levelname} {record.name}: {logging.Formatter().format(record)}"
        text = record.getMessage()
        if not record.name.startswith(OURS):
            text = (text.splitlines() or [""])[0]  # a library's first line; the rest is in the log file
        return f"{when} {self.PREFIX.get(record.levelno, '')}{text}"


class WorkspaceFile(logging.FileHandler):
    """The workspace's log file (FLYWHEEL_LOG_FILE), every record with its traceback; nothing when unset."""

    def __init__(self) -> None:
        path = os.environ.get(LOG_FILE)
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(path or os.devnull, delay=True)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"))


def describe(error: BaseException) -> str:
    """One line for a flow failure: a flywheel error's message, or the exception and where its traceback is."""
    if isinstance(error, FlywheelError):
        return str(error)
    where = os.environ.get(LOG_FILE, "the Prefect UI")
    return f"{error.__class__.__name__}: {' '.join(str(error).split())} (traceback in {where}; --verbose shows it here)"
