"""Only flywheel's own lines reach the terminal: a library that brought a handler of its own (MLflow
configures its loggers when imported; Lightning when the root logger has none yet) is routed through
flywheel's handlers, its INFO to the log file only."""

from __future__ import annotations

import logging

from flows import logs
from tests.conftest import ROOT


def test_a_librarys_own_handler_is_replaced_by_flywheels(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(logs.LOG_FILE, str(tmp_path / "flywheel.log"))
    monkeypatch.delenv(logs.VERBOSE, raising=False)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [logs.Terminal(), logs.WorkspaceFile()])
    monkeypatch.setattr(root, "level", logging.INFO)
    for name in ("mlflow", "lightning.pytorch"):  # as the libraries leave them
        library = logging.getLogger(name)
        monkeypatch.setattr(library, "handlers", [logging.StreamHandler()])
        monkeypatch.setattr(library, "propagate", False)
        monkeypatch.setattr(library, "level", logging.INFO)

    logs.adopt_library_loggers()
    logging.getLogger("mlflow.store").info("Waiting up to 300 seconds for model version to finish creation.")
    logging.getLogger("lightning.pytorch.loggers.mlflow").warning("Experiment with name x not found. Creating it.")
    logging.getLogger("components.loop.train").info("Trained a model.")
    for handler in root.handlers:
        handler.flush()

    terminal = capsys.readouterr().err
    assert "Waiting up to 300 seconds" not in terminal and "Trained a model." in terminal
    assert terminal.count("Experiment with name x not found") == 1  # a library's warning: once, ours
    assert "Waiting up to 300 seconds" in (tmp_path / "flywheel.log").read_text()


def test_a_child_process_that_imports_the_loop_before_prefect_logs_through_flywheels_handlers(tmp_path):
    """The warm worker, the background pretraining and the retrain runner start as `python -m ...`
    and import the loop (MLflow's pytorch flavor calls `logging.basicConfig`) before Prefect: their
    entry points call `logs.setup()` first, so a library's INFO reaches the log file, not the terminal."""
    import os
    import subprocess
    import sys

    log_file = tmp_path / "flywheel.log"
    child = """
from flows import logs
logs.setup()
from components.loop.workspace import WorkspaceCache  # imports mlflow.pytorch
import logging, prefect
logging.getLogger("great_expectations").info("a library's chatter")
logging.getLogger("components.loop").info("flywheel's own line")
"""
    env = {**os.environ, logs.LOG_FILE: str(log_file), "PREFECT_LOGGING_SETTINGS_PATH": str(logs.SETTINGS_PATH)}
    env.pop(logs.VERBOSE, None)
    done = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "flywheel's own line" in done.stderr and "a library's chatter" not in done.stderr
    assert "a library's chatter" in log_file.read_text()


def test_a_command_that_fails_before_setting_up_logging_still_says_one_line(tmp_path):
    """`bench all` sets up no logging of its own (its benchmarks run in child processes): its failure's
    traceback goes to the log file, not through Python's last-resort handler onto the terminal."""
    import os
    import subprocess
    import sys

    env = {**os.environ, logs.LOG_FILE: str(tmp_path / "flywheel.log")}
    env.pop(logs.VERBOSE, None)
    child = "import sys; sys.argv = ['flywheel', 'bench', 'all', '--only', 'no-such-benchmark']\nfrom flows.cli import app\napp()"
    done = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line
    assert done.stderr.startswith("error: no benchmark 'no-such-benchmark'") and "Traceback" not in done.stderr


def test_only_a_failure_to_reach_a_server_is_blamed_on_a_server():
    """A missing image or a class the config lacks once read "Label Studio, MLflow, Prefect stopped
    answering" whenever the default stack was down (e.g. after `bench simulate`'s throwaway stack)."""
    import requests
    from mlflow.exceptions import MlflowException

    from flows.cli.base import _explain, connection_failed

    assert not connection_failed(FileNotFoundError("images/a.png"))
    assert not connection_failed(ValueError("'plants' is not in list"))
    assert connection_failed(requests.ConnectionError("refused"))
    assert connection_failed(ConnectionRefusedError(111, "refused"))
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError:
            raise MlflowException("API request failed") from None  # a wrapper that hides its cause from the traceback
    except MlflowException as wrapped:
        assert connection_failed(wrapped)  # the refused connection is still its context
    try:
        try:
            raise requests.ConnectionError("Max retries exceeded")
        except requests.ConnectionError as e:
            raise RuntimeError("API request failed") from e
    except RuntimeError as wrapped:
        assert connection_failed(wrapped)
    message = _explain(FileNotFoundError(2, "No such file or directory", "my/images/a.png"))
    assert "stopped answering" not in message and "FileNotFoundError" in message
