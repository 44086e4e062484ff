"""Only flywheel's own lines reach the terminal: a library that brought a handler of its own (MLflow
configures its loggers when imported; Lightning when the root logger has none yet) is routed through
flywheel's handlers, its INFO to the log file only."""

from __future__ import annotations

import logging

from flows import logs


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
