"""What every `flywheel` command shares: the root callback, one-line errors, and the settings a command
prepares before its clients import."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from components.core.errors import FlywheelError, SettingsError
from components.core.settings import CLIENT_ENV, NO_PHONE_HOME, Settings, load_settings, logging_env
from flows import logs

HELP = "flywheel: train a vision model while people label in Label Studio."
TASKS = ("classification", "detection", "segmentation")
tracebacks = logging.getLogger(logs.TRACEBACKS)


def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show every log record and traceback.")] = False,
) -> None:
    """flywheel: train a vision model while people label in Label Studio."""
    if verbose:
        os.environ[logs.VERBOSE] = "1"


def clear_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print a failure as one line that says what to do, and exit 1; the traceback goes to the log
    file (and to the terminal with --verbose)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FlywheelError as e:
            _logging_ready()
            tracebacks.error("%s", e, exc_info=True)
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            _exit(1)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as e:
            if logs.verbose():
                raise
            _logging_ready()
            tracebacks.error("%s: %s", e.__class__.__name__, e, exc_info=True)
            typer.secho(f"error: {_explain(e)}", fg=typer.colors.RED, err=True)
            _exit(1)

    return run


def _logging_ready() -> None:
    """flywheel's handlers, for a command that failed before setting up logging (`bench all` runs its
    benchmarks in child processes and sets up nothing): else the traceback meant for the log file
    reaches the terminal through Python's last-resort handler."""
    if not logging.getLogger().handlers:
        logs.setup()


def _exit(code: int) -> None:
    """Exit with `code`. When Prefect's API is down, exit at once: at exit, Prefect's background
    workers would try to send the failed run's events and logs for another half minute."""
    if "prefect" in sys.modules:
        from components.adapters.stack import is_healthy

        if not is_healthy(f"{os.environ.get('PREFECT_API_URL', '')}/health", timeout=1):
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    raise typer.Exit(code)


def connection_failed(error: BaseException) -> bool:
    """Whether `error`, or one it was raised from, is a failure to reach a server (refused, reset, timed
    out, no route): only then may a failure be blamed on a server that stopped answering."""
    import requests

    kinds: list[type[BaseException]] = [ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout]
    try:
        import httpx

        kinds += [httpx.TransportError]
    except ImportError:
        pass
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, tuple(kinds)):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _explain(error: Exception) -> str:
    """An unexpected failure in one line: a failure to reach a server that is down says which and how
    to start it; anything else (a missing file, a bad value) is named with where its traceback is."""
    down = []
    if connection_failed(error):
        try:
            from components.adapters import stack

            down = [row for row in stack.status(load_settings()) if not row.healthy]
        except SettingsError:
            down = []
    if down:
        names = ", ".join(f"{row.title} at {row.url}" for row in down)
        return (
            f"{names} stopped answering ({error.__class__.__name__}). Start it with `flywheel stack up`, "
            "then run again: the rerun finishes the job."
        )
    return logs.describe(error)


def _settings() -> Settings:
    """Settings, with the environment prepared for Prefect and MLflow clients (before they import):
    no phone-home, bounded retries, flywheel's logging (one line per thing; the rest to the log file)."""
    for key, value in {**NO_PHONE_HOME, **CLIENT_ENV}.items():
        os.environ.setdefault(key, value)
    settings = load_settings()
    settings.apply_client_env()  # the team profile's object store, for DVC and MLflow clients
    os.environ.setdefault("PREFECT_API_URL", settings.prefect_api_url)
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(settings.workspace / "prefect" / "results"))  # flow summaries
    for name, value in logging_env(logs.SETTINGS_PATH, settings.workspace).items():
        os.environ.setdefault(name, value)
    # A logging handler that fails (Prefect's log shipper with its server down) stays quiet: the run's
    # own one-line error says what failed, and "--- Error logging to API ---" noise would bury it.
    logging.raiseExceptions = False
    if "prefect" not in sys.modules:  # Prefect configures logging when imported; before that, ours
        logs.setup()
    logs.adopt_library_loggers()  # a benchmark's module may have imported MLflow or Lightning before this ran
    return settings


def _loop_settings() -> Settings:
    """Settings for a command that runs the loop: every server must answer first, or one line says
    which does not and how to start it (instead of a traceback minutes later)."""
    from components.adapters import stack

    settings = _settings()
    down = [row for row in stack.status(settings) if not row.healthy and row.name != "serve_model" and not row.name.startswith("worker_")]
    if down:
        raise FlywheelError(
            "; ".join(f"{row.title} at {row.url} does not answer" for row in down)
            + ". Start the stack with `flywheel stack up` (or point LABEL_STUDIO_URL, MLFLOW_TRACKING_URI, "
            "PREFECT_API_URL at your servers)."
        )
    from components.adapters.label_studio import LabelStudio

    LabelStudio.from_settings(settings).check()  # a wrong token is said now, not after the loop's imports
    return settings


ParamsOption = Annotated[Path, typer.Option("--params", help="The params.yaml to use.")]
ProjectOption = Annotated[int | None, typer.Option(
    "--project", help="Attach to this existing Label Studio project (its id): its labeling config, task type and labels are "
                      "read from it, not from a local XML (params.yaml project.id).")]


def _attached(params: Path, project: int | None) -> Path:
    """`params`, or with `project` a copy of it with `project.id` set and the registry's model name and
    experiment suffixed with it (a champion is never another project's), in the workspace: the file the
    loop's flows read, as they read params.yaml."""
    if project is None:
        return params
    from components.core.params import load_params, write_derived_params

    registry = load_params(params).registry
    out = load_settings().workspace / "attached" / f"params-project-{project}.yaml"
    write_derived_params(params, {"project": {"id": project}, "registry": {
        "model_name": f"{registry.model_name}-project-{project}", "experiment": f"{registry.experiment}-project-{project}"}}, out)
    return out


def _progress(description: str) -> Callable[[Any], Any]:
    """A progress bar over images, shown only on a terminal."""
    from tqdm import tqdm

    return lambda items: tqdm(items, desc=description, unit="img", disable=not sys.stderr.isatty())
