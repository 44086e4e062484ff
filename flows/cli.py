"""`flywheel`: the one entry point for everything a user does."""

from __future__ import annotations

import functools
import logging
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from components.core.errors import FlywheelError, SettingsError
from components.core.settings import CLIENT_ENV, NO_PHONE_HOME, Settings, load_settings
from flows import logs

app = typer.Typer(
    help="flywheel: train a vision model while people label in Label Studio.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
stack_app = typer.Typer(help="The embedded Label Studio, MLflow and Prefect servers on 127.0.0.1.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
log = logging.getLogger(__name__)
tracebacks = logging.getLogger(logs.TRACEBACKS)
TASKS = ("classification", "detection", "segmentation")


@app.callback()
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
            tracebacks.error("%s", e, exc_info=True)
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            _exit(1)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as e:
            if logs.verbose():
                raise
            tracebacks.error("%s: %s", e.__class__.__name__, e, exc_info=True)
            typer.secho(f"error: {_explain(e)}", fg=typer.colors.RED, err=True)
            _exit(1)

    return run


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


def _explain(error: Exception) -> str:
    """An unexpected failure in one line: a server that stopped answering says so, anything else is
    named with where its traceback is."""
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
    os.environ.setdefault("PREFECT_LOGGING_SETTINGS_PATH", str(logs.SETTINGS_PATH))
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "components,flows")  # their records reach the Prefect UI too
    os.environ.setdefault(logs.LOG_FILE, str(settings.workspace / "logs" / "flywheel.log"))
    # A logging handler that fails (Prefect's log shipper with its server down) stays quiet: the run's
    # own one-line error says what failed, and "--- Error logging to API ---" noise would bury it.
    logging.raiseExceptions = False
    if "prefect" not in sys.modules:  # Prefect configures logging when imported; before that, ours
        logging.basicConfig(level=logging.INFO, handlers=[logs.Terminal(), logs.WorkspaceFile()], force=True)
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


@stack_app.command("up")
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


@stack_app.command("down")
@clear_errors
def stack_down() -> None:
    """Stop the servers `stack up` started, and nothing else."""
    from components.adapters import stack

    if not stack.down(_settings(), echo=typer.echo):
        typer.echo("nothing to stop")


@stack_app.command("status")
@clear_errors
def stack_status() -> None:
    """Show each server's URL and health."""
    from components.adapters import stack

    typer.echo(stack.describe(stack.status(_settings())))


@app.command("import")
@clear_errors
def import_folder(
    folder: Annotated[Path, typer.Argument(help="A folder of images (searched recursively), or a COCO file (.json) "
                                                 "whose boxes (or, for a segmentation config, masks) become "
                                                 "pre-annotations.", exists=True)],
    project: Annotated[str | None, typer.Option(help="Project title (default: params.yaml project.title).")] = None,
    config: Annotated[Path | None, typer.Option(help="Labeling config (default: params.yaml project.config).")] = None,
) -> None:
    """Import a folder of images as tasks; files already imported (same content) are skipped.

    A COCO file's images are imported the same way, and its boxes or masks are written as pre-annotations
    (model version "coco:<file>") for people to confirm: flywheel never writes annotations."""
    from components.core.conversions import Prediction
    from components.studies.datasets import read_boxes
    from components.adapters.label_studio import LabelStudio
    from components.data.images import find_images
    from components.core.labeling_config import load_labeling_config
    from components.core.params import load_params
    from components.tasks import task_type_of

    settings = _settings()
    params = load_params()
    labeling = load_labeling_config(config or params.project.config)
    coco = folder.is_file()
    if coco and labeling.task == "classification":
        raise SettingsError(
            f"{folder} is a file: a COCO file needs a detection or segmentation project (e.g. --config "
            f"label_studio_config/detection.xml or segmentation.xml); the config given is {labeling.task}."
        )
    ls = LabelStudio.from_settings(settings)
    target = ls.ensure_project(project or params.project.title, labeling)
    items = read_boxes(folder, masks=labeling.task == "segmentation") if coco else []
    result = ls.import_images(target, [i.path for i in items] if coco else find_images(folder), progress=_progress("hashing images"))
    typer.echo(f"project {target.id}: {len(result.created)} tasks created, {result.skipped} already there")
    if coco:
        from components.data.images import file_sha256

        ids, task_type = ls.task_hashes(target.id), task_type_of(target.config)
        created = set(result.created)
        predictions = [
            Prediction(task_id, tuple(task_type.result_of(item.label, target.config)), 1.0)
            for item in items if (task_id := ids.get(file_sha256(item.path))) in created
        ]
        ls.add_predictions(target.id, predictions, f"coco:{folder.name}")
        typer.echo(f"{len(predictions)} pre-annotations from {folder.name}")


@app.command("demo")
@clear_errors
def demo(
    loop: Annotated[bool, typer.Option(help="Serve the loop after creating the project.")] = True,
    task: Annotated[str, typer.Option(help="classification (MNIST digits) | detection (digits composited onto "
                                            "backgrounds, boxes) | segmentation (the same, instance masks)")] = "classification",
) -> None:
    """Bring up the stack, create the demo project from a dataset that ships in a package, serve the loop."""
    from components.adapters import stack
    from components.studies.datasets import materialize
    from components.adapters.label_studio import LabelStudio
    from components.core.labeling_config import load_labeling_config
    from components.core.params import load_params, write_derived_params

    settings = _settings()
    params = load_params()
    params_path, dataset, limit = Path("params.yaml"), params.demo.dataset, params.demo.limit
    if task in TASKS[1:]:
        params_path = settings.workspace / "demo" / f"params-{task}.yaml"
        params = write_derived_params("params.yaml", params.demo.of(task).params, params_path)
        dataset, limit = params.demo.of(task).dataset, params.demo.of(task).limit
        typer.echo(f"{task} demo: params in {params_path} (params.yaml with demo.{task}.params)")
    elif task != "classification":
        raise SettingsError(f"--task must be one of {', '.join(TASKS)}, not {task!r}.")
    stack.up(settings, echo=typer.echo)
    images = materialize(dataset, settings.workspace / "datasets", limit=limit)
    random.Random(0).shuffle(images)  # the Data Manager opens on a mix of classes, not a run of zeros
    ls = LabelStudio.from_settings(load_settings())  # re-read: `up` may have just created the token
    project = ls.ensure_project(params.project.title, load_labeling_config(params.project.config))
    result = ls.import_images(project, [i.path for i in images], progress=_progress("importing demo images"))
    typer.echo(f"project {project.id}: {len(result.created)} tasks created, {result.skipped} already there")
    typer.echo(stack.describe(stack.status(settings)))
    typer.echo(
        f"\nLabel some images: {settings.label_studio_url}/projects/{project.id}/data "
        f"(login in {settings.credentials_path}). Pre-annotations appear on the rest after the next poll."
    )
    if loop:
        serve(params_path)
    elif params_path != Path("params.yaml"):
        typer.echo(f"Serve its loop: flywheel serve --params {params_path}")


@app.command("run")
@clear_errors
def run_once(params: ParamsOption = Path("params.yaml")) -> None:
    """Run one flywheel iteration now: poll, and if enough changed, snapshot -> ... -> write back;
    then the strategy report when the iteration left it out of date."""
    _loop_settings()
    from flows.flywheel import flywheel_iteration, tidy_predictions

    from flows.pretrain import pretrain

    summary = flywheel_iteration(str(params))
    if not (summary["snapshot"] or summary["trained"] or summary["written"]):
        typer.echo(f"{summary['changed_tasks']} changed task(s): nothing to do.")
    if summary["trained"] or summary["snapshot"]:
        flywheel_iteration(str(params))  # an idle pass: the strategy report for the new model
    if summary["written"]:
        tidy_predictions(str(params))  # nobody waits on a one-off run: superseded pre-annotations go now
    pretrain(str(params))  # last: when the image pool grew, the next model starts from a fresh backbone


@app.command("pretrain")
@clear_errors
def pretrain_now(
    params: ParamsOption = Path("params.yaml"),
    force: Annotated[bool, typer.Option(help="Pretrain even if the pool did not grow by pretrain.refresh_growth.")] = False,
) -> None:
    """Pretrain the loop architecture's backbone on every image of the project, labeled or not
    (self-supervised, lightly's SimCLR); the loop's next models start from it."""
    _loop_settings()
    from flows.pretrain import pretrain

    summary = pretrain(str(params), force=force)
    if summary["pretrained"]:
        typer.echo(f"Pretrained on {summary['pool_images']} images ({summary['pool_rev']}) in {summary['seconds']:.0f} s.")
    else:
        typer.echo("Nothing to pretrain: pretrain.enabled is off, the architecture has no backbone, or the pool did not grow "
                   "by pretrain.refresh_growth since the last backbone (--force pretrains again).")


@app.command("retrain")
@clear_errors
def retrain_now(params: ParamsOption = Path("params.yaml")) -> None:
    """Train every architecture in params.yaml on the latest snapshot now; the best may become champion."""
    _loop_settings()
    from flows.retrain import retrain

    retrain(str(params))


@app.command("errors")
@clear_errors
def errors_now(
    params: ParamsOption = Path("params.yaml"),
    force: Annotated[bool, typer.Option(help="Check again even if this snapshot was checked.")] = False,
) -> None:
    """Find the labels most likely wrong in the latest snapshot (k-fold + cleanlab) and flag them in
    Label Studio's "Suspected label errors" tab."""
    _loop_settings()
    from flows.label_errors import find_label_errors

    find_label_errors(str(params), force=force)


@app.command("report")
@clear_errors
def report_now(params: ParamsOption = Path("params.yaml")) -> None:
    """Is the annotation strategy working? Learning curve, classes needing labels, confused pairs,
    acceptance of suggestions; writes the HTML report into the workspace and prints its summary."""
    settings = _loop_settings()
    from components.adapters.label_studio import SUSPECTS_VIEW
    from components.core.params import load_params
    from components.loop.insight import report
    from components.loop.workspace import open_workspace
    from components.studies.report import summary_lines

    ws = open_workspace(settings, load_params(params), project_root=params.parent)
    champion, latest = ws.models.champion(), ws.data.latest()
    if champion is None or latest is None:
        raise FlywheelError("No model yet: label some tasks and run `flywheel run` (or `flywheel serve`) first.")
    result, path = report(ws, champion, latest)
    typer.echo("\n".join(summary_lines(result)))
    suspects = ws.label_studio.view_id(ws.project.id, SUSPECTS_VIEW)
    typer.echo(f"Report: {path}")
    if suspects:
        typer.echo(f"Suspected label errors: {settings.label_studio_url}/projects/{ws.project.id}/data?tab={suspects}")


@app.command("strategy")
@clear_errors
def strategy_now(
    params: ParamsOption = Path("params.yaml"),
    dataset: Annotated[str, typer.Option(help="Compare on a dataset with instance masks instead of the project: "
                                              "digit-masks (the demo set) or a COCO .json with segmentation.")] = "",
    count: Annotated[int, typer.Option(help="Images of --dataset to use, held-out ones included.")] = 1300,
    out: Annotated[Path | None, typer.Option(help="Folder for strategy.md/.png/.json (default: the workspace's reports).")] = None,
) -> None:
    """Boxes or masks? Train both on the same images at params.yaml's strategy.hours of annotation and
    say which reaches strategy.target on strategy.metric sooner, by how many hours, or that it is too
    early to tell. Images come from the project (labeled with masks; timed by Label Studio's
    lead_time) or from --dataset (timed by params.yaml's published costs)."""
    import json

    from components.studies import strategy
    from components.core.params import load_params

    settings = _settings()
    loaded = load_params(params)
    if dataset:
        items = strategy.from_dataset(dataset, settings.workspace / "datasets", count, loaded.strategy.seconds_per_object)
        folder = out or settings.workspace / "reports" / f"strategy-{Path(dataset).stem}"
        title = f"{Path(dataset).stem}: boxes vs masks"
        labels = sorted({box["label"] for item in items for box in json.loads(item.target)["boxes"]}, key=lambda x: (len(x), x))
    else:
        from components.loop.insight import strategy_items
        from components.loop.workspace import open_workspace, reports_dir

        ws = open_workspace(_loop_settings(), loaded, project_root=params.parent)
        items = strategy_items(ws)
        folder = out or reports_dir(ws) / "strategy"
        title = f"{ws.project.title}: boxes vs masks"
        labels = list(ws.project.config.labels)
    if len(items) < 3 * strategy.MIN_IMAGES:
        raise FlywheelError(f"Only {len(items)} images labeled with masks; label at least {3 * strategy.MIN_IMAGES} to compare strategies.")
    pool, held_out = strategy.split(items, loaded.strategy.held_out)
    typer.echo(f"{len(pool)} images to label, {len(held_out)} held out; budgets {loaded.strategy.hours} h")
    points, verdicts = strategy.compare(pool, held_out, labels, loaded.strategy, loaded.architectures, progress=typer.echo)
    path = strategy.write(points, verdicts, folder, title, loaded.strategy.seconds_per_object)
    for verdict in verdicts.values():
        typer.echo(verdict.sentence)
    typer.echo(f"Comparison: {path}")


@app.command("serve")
@clear_errors
def serve(params: ParamsOption = Path("params.yaml")) -> None:
    """Serve the loop: answer Label Studio's webhooks within seconds, poll as a safety net, retrain on
    retrain.cron (Ctrl-C stops)."""
    settings = _loop_settings()
    from components.core.params import load_params
    from flows.serve import serve as supervise

    loaded = load_params(params)
    how = (f"on Label Studio's webhooks (receiver {settings.receiver_url}) and a safety-net poll every "
           f"{loaded.poll.safety_net_s:g}s") if loaded.poll.webhooks else f"on a poll every {loaded.poll.safety_net_s:g}s"
    typer.echo(
        f"Serving: iterations {how}; retrain on '{loaded.retrain.cron}'; labels checked {loaded.errors.after_idle_s:g}s after the last change. "
        f"Runs: {settings.prefect_api_url.removesuffix('/api')}/runs"
    )
    code = supervise(settings, params)
    if code:
        raise typer.Exit(code)


@app.command("deploy")
@clear_errors
def deploy_flows(params: ParamsOption = Path("params.yaml")) -> None:
    """Deploy the loop's flows (iteration, label check, tidy, the retrain on retrain.cron) to the Prefect
    process pool `flywheel`, whose workers run them (`flywheel stack up --profile team` starts two)."""
    _loop_settings()
    from components.core.params import load_params
    from flows.deploy import POOL, deploy, workers_online

    ids = deploy(load_params(params), params)
    online = workers_online()
    typer.echo(f"Deployed {', '.join(sorted(ids))} to the work pool {POOL!r}; {len(online)} worker(s) online"
               + (f": {', '.join(online)}" if online else " (start them with `flywheel stack up --profile team`)") + ".")


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
    from components.networks.export import export, exports_onnx
    from components.core.params import load_params
    from components.adapters.registry import ModelRegistry

    loaded = load_params(params)
    models = ModelRegistry(settings.mlflow_tracking_uri, loaded.registry.model_name, loaded.registry.experiment)
    chosen = models.version(version) if version is not None else models.champion()
    if chosen is None:
        raise FlywheelError(f"No champion of {loaded.registry.model_name!r} yet: run `flywheel run` first, or pass --version.")
    model = models.load(chosen)
    formats = format or (["onnx"] if exports_onnx(model) else ["torchscript"])
    for path in export(model, formats, out, chosen.model_version):
        typer.echo(f"Wrote {path}")


pipeline_app = typer.Typer(help="The dvc.yaml stages (run them with `dvc repro`).", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")


@pipeline_app.command("fetch")
@clear_errors
def pipeline_fetch(
    out: Annotated[Path, typer.Option(help="Where to restore the snapshot.")],
    rev: Annotated[str, typer.Option(help="A snapshot tag (snapshot-0003) or 'latest'.")] = "latest",
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Restore a versioned snapshot from the DVC remote."""
    from components.core.params import load_params
    from components.loop.pipeline import fetch_snapshot

    restored = fetch_snapshot(_settings().workspace, load_params(params).project.title, rev, out)
    typer.echo(f"restored {restored} into {out}")


@pipeline_app.command("validate")
@clear_errors
def pipeline_validate(
    snapshot: Path, report: Annotated[Path, typer.Option()], params: ParamsOption = Path("params.yaml")
) -> None:
    """Check a snapshot folder against the data contract."""
    from components.core.labeling_config import load_labeling_config
    from components.core.params import load_params
    from components.loop.pipeline import validate_folder

    _settings()
    loaded = load_params(params)
    validate_folder(snapshot, load_labeling_config(loaded.project.config), loaded.validate_.min_per_class, report)
    typer.echo(f"{snapshot} meets the data contract")


@pipeline_app.command("train")
@clear_errors
def pipeline_train(snapshot: Path, out: Annotated[Path, typer.Option()], params: ParamsOption = Path("params.yaml")) -> None:
    """Train params.yaml's architecture on a snapshot folder (tracked in MLflow)."""
    from components.adapters import stack
    from components.core.labeling_config import load_labeling_config
    from components.core.params import load_params
    from components.loop.pipeline import train_folder
    from components.tasks import task_type_of

    settings = _settings()
    if settings.mlflow_tracking_uri.startswith("http") and not stack.is_healthy(f"{settings.mlflow_tracking_uri}/health"):
        raise FlywheelError(f"MLflow at {settings.mlflow_tracking_uri} does not answer: run `flywheel stack up` or set MLFLOW_TRACKING_URI.")
    loaded = load_params(params)
    config = load_labeling_config(loaded.project.config)
    metrics = train_folder(snapshot, config, loaded, settings.mlflow_tracking_uri, out)
    metric = task_type_of(config).metric
    typer.echo(f"trained {loaded.train.architecture}: val {metric} {metrics[f'best_val_{metric}']:.3f}")


@pipeline_app.command("evaluate")
@clear_errors
def pipeline_evaluate(
    snapshot: Path, model: Path, metrics: Annotated[Path, typer.Option()], plot: Annotated[Path, typer.Option()],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Evaluate a trained model on the snapshot's validation split."""
    from components.core.labeling_config import load_labeling_config
    from components.core.params import load_params
    from components.loop.pipeline import evaluate_folder

    _settings()
    config = load_labeling_config(load_params(params).project.config)
    values = evaluate_folder(snapshot, config, model, metrics, plot)
    typer.echo(", ".join(f"{name} {value:.3f}" for name, value in values.items() if name != "val_images"))


bench_app = typer.Typer(help="Benchmarks; each writes bench/results.json and bench/RESULTS.md.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("simulate")
@clear_errors
def bench_simulate(
    dataset: Annotated[str, typer.Option(help="mnist | digits | a folder laid out class_name/image.png; for "
                                               "detection/segmentation: params.yaml demo.<task>.dataset unless given")] = "",
    task: Annotated[str, typer.Option(help="classification | detection | segmentation")] = "classification",
    order: Annotated[list[str], typer.Option(help="random and/or suggested (repeat the option for both)")] = ["random", "suggested"],  # noqa: B006
    budget: Annotated[int, typer.Option(help="Labels the simulated person makes.")] = 300,
    every: Annotated[int, typer.Option(help="Labels between flywheel iterations (K).")] = 20,
    pool: Annotated[int, typer.Option(help="Images imported as tasks.")] = 1000,
    held_out: Annotated[int, typer.Option(help="Images kept aside, never labeled, to score each champion.")] = 500,
    seed: int = 0,
) -> None:
    """Play a person labeling a real dataset with flywheel's pre-annotations, on a throwaway stack."""
    from bench.simulate import SimulationConfig, main
    from components.core.params import load_params

    _settings()
    if task not in TASKS:
        raise SettingsError(f"--task must be one of {', '.join(TASKS)}, not {task!r}.")
    if not dataset:
        dataset = load_params().demo.of(task).dataset if task != "classification" else "mnist"
    main(SimulationConfig(dataset, tuple(order), pool, held_out, budget, every, seed, task), echo=typer.echo)


@bench_app.command("every-image")
@clear_errors
def bench_every_image(
    dataset: Annotated[list[str], typer.Option(help="mnist and/or fashion-mnist (repeat the option)")] = ["mnist", "fashion-mnist"],  # noqa: B006
    seeds: Annotated[int, typer.Option(help="Seeds per dataset (pool draw and annotator order).")] = 3,
    budget: Annotated[int, typer.Option(help="Labels the simulated person makes.")] = 300,
    pool: Annotated[int, typer.Option(help="Images imported as tasks.")] = 1000,
    order: Annotated[list[str], typer.Option(help="random and/or suggested (repeat the option)")] = ["random", "suggested"],  # noqa: B006
) -> None:
    """Pretraining on every image: few-shot accuracy, acceptance, final accuracy, label savings over seeds."""
    from bench.every_image import Config, main

    _settings()
    main(Config(datasets=tuple(dataset), seeds=tuple(range(seeds)), orders=tuple(order), budget=budget, pool=pool), echo=typer.echo)


@bench_app.command("strategy")
@clear_errors
def bench_strategy() -> None:
    """Boxes or masks on the demo set, in annotation hours (`flywheel strategy --dataset digit-masks`)."""
    from bench.strategy import main

    _settings()
    main(echo=typer.echo)


@bench_app.command("micro")
@clear_errors
def bench_micro() -> None:
    """Incremental poll vs full export, bulk vs one-call write-back, training throughput."""
    from bench.micro import main

    _settings()
    main()


@bench_app.command("latency")
@clear_errors
def bench_latency() -> None:
    """Seconds from an annotation saved to refreshed pre-annotations, with a stage breakdown."""
    from bench.latency import main

    _settings()
    main()


@bench_app.command("errors")
@clear_errors
def bench_errors() -> None:
    """Flip 5/10/20% of the default dataset's labels on purpose; does the error finder rank them first?"""
    from bench.label_errors import main

    _settings()
    main(echo=typer.echo)


@bench_app.command("robustness")
@clear_errors
def bench_robustness() -> None:
    """The bad-input corpus, the wait for a clear error with each server dead, predictions kept after 10 models."""
    from bench.robustness import main

    _settings()
    main()


@bench_app.command("serving")
@clear_errors
def bench_serving() -> None:
    """`flywheel serve-model` on loopback: p50 latency, throughput at 16 in flight, errors, seconds to Label Studio."""
    from bench.serving import main

    _settings()
    main()


@bench_app.command("ddp")
@clear_errors
def bench_ddp() -> None:
    """The full retrain on one process vs two (Lightning DDP on CPU): validation accuracy and seconds."""
    from bench.ddp import main

    _settings()
    main(echo=typer.echo)


@bench_app.command("load")
@clear_errors
def bench_load(
    annotations: Annotated[int, typer.Option(help="How many annotations the 20 simulated annotators save.")] = 5000,
) -> None:
    """20 annotators save 5,000 labels while two loop workers run (team profile): each in a snapshot once?
    Then how long a poll waits for the lock while the label check trains."""
    from bench.load import main

    _settings()
    main(annotations, echo=typer.echo)


@bench_app.command("faults")
@clear_errors
def bench_faults(
    case: Annotated[list[str] | None, typer.Option("--case", help="Only this case, as component:step (repeatable).")] = None,
) -> None:
    """The fault matrix on a throwaway team-profile stack: kill -9 each server and the worker during each step."""
    from bench.faults import main

    _settings()
    results = main(case or None, echo=typer.echo)
    if not all(c.passed for c in results):
        raise FlywheelError(f"{sum(not c.passed for c in results)} of {len(results)} fault cases failed (bench/RESULTS.md).")


@bench_app.command("all")
@clear_errors
def bench_all(
    force: Annotated[bool, typer.Option(help="Rerun every benchmark, also those measured on the code as it is now.")] = False,
    only: Annotated[list[str] | None, typer.Option(help="Only these benchmarks (names as in `flywheel bench status`).")] = None,
) -> None:
    """Every benchmark that writes a figure, each in its own process, on the code as it is now (about 4
    hours on a 2-core CPU). Those already measured on this code are skipped, so a stopped run resumes."""
    import subprocess

    from bench.results import CATALOG, benchmark, stale

    chosen = [benchmark(name) for name in only] if only else list(CATALOG)
    todo = chosen if force else stale(b.name for b in chosen)
    for entry in chosen:
        if entry not in todo:
            typer.echo(f"{entry.name}: measured on this code already (--force reruns it)")
    failed = []
    for number, entry in enumerate(todo, 1):
        typer.echo(f"[{number}/{len(todo)}] {entry.command}  (about {entry.minutes} min)")
        done = subprocess.run([str(Path(sys.executable).parent / "flywheel"), "bench", *entry.args.split()], check=False)
        if done.returncode != 0:
            failed.append(entry.name)
    if failed:
        raise FlywheelError(f"{len(failed)} benchmark(s) failed: {', '.join(failed)}; their figures stay as they were "
                            f"(`flywheel bench status`). Rerun one with `flywheel bench all --only NAME`.")


@bench_app.command("status")
@clear_errors
def bench_status() -> None:
    """Which figures were measured on the code as it is now, which on older code, which never."""
    from bench.results import orphans, standings

    for s in standings():
        stamp = s.stamp
        where = (f"{stamp['commit']}{'+dirty' if stamp.get('dirty') else ''} {stamp['date'][:10]}"
                 + (f", {s.commits_behind} commit(s) before HEAD" if s.commits_behind else "")) if stamp else ""
        typer.echo(f"{s.benchmark.name:22s} {s.state:18s} {s.figures:3d} figures  {where}")
    for key in orphans():
        typer.echo(f"{key}: in bench/results.json but not one benchmark's figure (bench/results.py CATALOG)")


def _progress(description: str) -> Callable[[Any], Any]:
    from tqdm import tqdm

    return lambda items: tqdm(items, desc=description, unit="img", disable=not sys.stderr.isatty())


if __name__ == "__main__":
    app()
