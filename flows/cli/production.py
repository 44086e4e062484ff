"""The champion in production: served over HTTP, or exported as a file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from components.core.errors import FlywheelError
from flows.cli.base import ParamsOption, _settings, clear_errors

app = typer.Typer()


@app.command("serve-model")
@clear_errors
def serve_model_now(
    params: ParamsOption = Path("params.yaml"),
    port: Annotated[int | None, typer.Option(help="Port on 127.0.0.1 (default: production.port).")] = None,
) -> None:
    """Serve the champion over HTTP (POST image bytes to /predict; /feedback for a wrong answer); images it
    is unsure of go back to Label Studio as tasks. It swaps to a newly promoted champion by itself (Ctrl-C stops)."""
    settings = _settings()  # Label Studio and MLflow are checked by serve_model; Prefect is not needed
    from components.core.params import load_params
    from flows.serve_model import serve_model

    loaded = load_params(params)
    port = port or int(os.environ.get("FLYWHEEL_SERVE_MODEL_PORT", loaded.production.port))
    typer.echo(
        f"Serving {loaded.registry.model_name}@champion at http://127.0.0.1:{port}/predict (POST image bytes); "
        f"answers under {loaded.production.route_below:g} confidence and /feedback go to Label Studio's "
        f"\"From production\" tab ({settings.label_studio_url})."
    )
    serve_model(params, port)


@app.command("export")
@clear_errors
def export_now(
    out: Annotated[Path, typer.Option(help="Folder to write the model file and its card (.json) into.")],
    format: Annotated[list[str] | None, typer.Option("--format", help="onnx and/or torchscript (repeat the option; default: "
                                                                     "onnx, torchscript for the box task types).")] = None,
    version: Annotated[int | None, typer.Option(help="A registered version number (default: the champion).")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Export the champion (or --version N) with its preprocessing inside: uint8 RGB pixels (N, H, W, 3) in."""
    settings = _settings()
    from components.adapters.registry import ModelRegistry
    from components.core.params import load_params
    from components.networks.export import export, exports_onnx

    loaded = load_params(params)
    models = ModelRegistry(settings.mlflow_tracking_uri, loaded.registry.model_name, loaded.registry.experiment)
    chosen = models.version(version) if version is not None else models.champion()
    if chosen is None:
        raise FlywheelError(f"No champion of {loaded.registry.model_name!r} yet: run `flywheel run` first, or pass --version.")
    model = models.load(chosen)
    if not exports_onnx(model) and not getattr(model, "exports_torchscript", True):
        raise FlywheelError(f"{chosen.model_version} ({models.architecture_of(chosen)}) exports to neither ONNX nor TorchScript: "
                            "its detections have a data-dependent size. Load it from MLflow (mlflow.pytorch.load_model) instead.")
    formats = format or (["onnx"] if exports_onnx(model) else ["torchscript"])
    for path in export(model, formats, out, chosen.model_version):
        typer.echo(f"Wrote {path}")
