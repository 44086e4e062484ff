"""`flywheel stack`: the embedded servers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from components.core.errors import FlywheelError
from components.core.settings import load_settings
from flows.cli.base import ParamsOption, _settings, clear_errors

app = typer.Typer(help="The embedded Label Studio, MLflow and Prefect servers on 127.0.0.1.", no_args_is_help=True)


@app.command("up")
@clear_errors
def stack_up(
    serve_model: Annotated[bool, typer.Option("--serve-model", help="Also serve the champion (`flywheel serve-model`) once the servers are up.")] = False,
    params: ParamsOption = Path("params.yaml"),
    profile: Annotated[str | None, typer.Option(
        "--profile", help="embedded (SQLite, folders) or team (PostgreSQL, an S3 object store, a work pool); "
        "chosen at a workspace's first `up`.")] = None,
) -> None:
    """Start the servers that are not running yet (twice is harmless) and print their URLs."""
    from components.adapters import stack

    stack.choose_profile(load_settings().workspace, profile)
    settings = _settings()
    then = []
    if serve_model:
        from components.core.params import load_params

        port = int(os.environ.get("FLYWHEEL_SERVE_MODEL_PORT", load_params(params).production.port))
        then.append(stack.model_endpoint(settings, params, port))
    rows = stack.up(settings, echo=typer.echo, then=then)
    typer.echo(stack.describe(rows))
    if not all(r.healthy for r in rows):
        raise FlywheelError("An external service does not answer; check the URL you set for it.")


@app.command("down")
@clear_errors
def stack_down() -> None:
    """Stop the servers `stack up` started, and nothing else."""
    from components.adapters import stack

    if not stack.down(_settings(), echo=typer.echo):
        typer.echo("nothing to stop")


@app.command("status")
@clear_errors
def stack_status() -> None:
    """Show each server's URL and health."""
    from components.adapters import stack

    typer.echo(stack.describe(stack.status(_settings())))
