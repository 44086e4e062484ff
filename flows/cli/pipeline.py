"""`flywheel pipeline`: the dvc.yaml stages."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from components.core.errors import FlywheelError
from flows.cli.base import ParamsOption, _settings, clear_errors

if TYPE_CHECKING:
    from components.core.labeling_config import LabelingConfig
    from components.core.params import Params
    from components.core.settings import Settings

app = typer.Typer(help="The dvc.yaml stages (run them with `dvc repro`).", no_args_is_help=True)


def _labeling(params: Params, settings: Settings) -> LabelingConfig:
    """The labeling config the stages read: the attached project's own (`project.id`, from Label Studio),
    else the local XML (no server needed)."""
    from components.core.labeling_config import load_labeling_config

    if params.project.id is None:
        return load_labeling_config(params.project.config)
    from components.adapters.label_studio import LabelStudio

    return LabelStudio.from_settings(settings).project(params.project.id).config


@app.command("fetch")
@clear_errors
def pipeline_fetch(
    out: Annotated[Path, typer.Option(help="Where to restore the snapshot.")],
    rev: Annotated[str, typer.Option(help="A snapshot tag (snapshot-0003) or 'latest'.")] = "latest",
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Restore a versioned snapshot from the DVC remote."""
    from components.core.params import load_params
    from components.loop.pipeline import fetch_snapshot

    project = load_params(params).project
    restored = fetch_snapshot(_settings().workspace, project.title, rev, out, project.id)
    typer.echo(f"restored {restored} into {out}")


@app.command("validate")
@clear_errors
def pipeline_validate(
    snapshot: Path, report: Annotated[Path, typer.Option()], params: ParamsOption = Path("params.yaml")
) -> None:
    """Check a snapshot folder against the data contract."""
    from components.core.params import load_params
    from components.loop.pipeline import validate_folder

    loaded = load_params(params)
    validate_folder(snapshot, _labeling(loaded, _settings()), loaded.validate_.min_per_class, report)
    typer.echo(f"{snapshot} meets the data contract")


@app.command("train")
@clear_errors
def pipeline_train(snapshot: Path, out: Annotated[Path, typer.Option()], params: ParamsOption = Path("params.yaml")) -> None:
    """Train params.yaml's architecture on a snapshot folder (tracked in MLflow)."""
    from components.adapters import stack
    from components.core.params import load_params
    from components.loop.pipeline import train_folder
    from components.tasks import task_type_of

    settings = _settings()
    if settings.mlflow_tracking_uri.startswith("http") and not stack.is_healthy(f"{settings.mlflow_tracking_uri}/health"):
        raise FlywheelError(f"MLflow at {settings.mlflow_tracking_uri} does not answer: run `flywheel stack up` or set MLFLOW_TRACKING_URI.")
    loaded = load_params(params)
    config = _labeling(loaded, settings)
    metrics = train_folder(snapshot, config, loaded, settings.mlflow_tracking_uri, out)
    metric = task_type_of(config).metric
    typer.echo(f"trained {loaded.train.architecture}: val {metric} {metrics[f'best_val_{metric}']:.3f}")


@app.command("evaluate")
@clear_errors
def pipeline_evaluate(
    snapshot: Path, model: Path, metrics: Annotated[Path, typer.Option()], plot: Annotated[Path, typer.Option()],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Evaluate a trained model on the snapshot's validation split."""
    from components.core.params import load_params
    from components.loop.pipeline import evaluate_folder

    config = _labeling(load_params(params), _settings())
    values = evaluate_folder(snapshot, config, model, metrics, plot)
    typer.echo(", ".join(f"{name} {value:.3f}" for name, value in values.items() if name != "val_images"))
