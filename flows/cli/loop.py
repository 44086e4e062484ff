"""The loop's commands: the demo, one iteration, pretraining, retraining, the label check, the reports,
serving the loop and deploying its flows."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated

import typer

from components.core.errors import FlywheelError, SettingsError
from components.core.settings import load_settings
from flows.cli.base import (
    TASKS,
    ParamsOption,
    ProjectOption,
    _attached,
    _loop_settings,
    _progress,
    _settings,
    clear_errors,
)

app = typer.Typer()


@app.command("demo")
@clear_errors
def demo(
    loop: Annotated[bool, typer.Option(help="Serve the loop after creating the project.")] = True,
    task: Annotated[str, typer.Option(help="classification (MNIST digits) | detection (digits composited onto "
                                            "backgrounds, boxes) | segmentation (the same, instance masks)")] = "classification",
    photos: Annotated[bool, typer.Option("--photos", help="detection, segmentation: the photo-scale set (colour clip art "
                                         "on crops of photographs, 384x288) instead of the digits")] = False,
) -> None:
    """Bring up the stack, create the demo project from a dataset that ships in a package, serve the loop."""
    from components.adapters import stack
    from components.adapters.label_studio import LabelStudio
    from components.core.labeling_config import load_labeling_config
    from components.core.params import load_params, write_derived_params
    from components.studies.datasets import materialize

    settings = _settings()
    params = load_params()
    params_path, dataset, limit = Path("params.yaml"), params.demo.dataset, params.demo.limit
    if task in TASKS[1:]:
        params_path = settings.workspace / "demo" / f"params-{task}.yaml"
        demo = params.demo.of(task, photos)
        params_path = settings.workspace / "demo" / f"params-{task}{'-photos' if photos else ''}.yaml"
        params = write_derived_params("params.yaml", demo.params, params_path)
        dataset, limit = demo.dataset, demo.limit
        typer.echo(f"{task} demo: params in {params_path} (params.yaml with demo.{task}.params{', then .photo.params' if photos else ''})")
    elif task != "classification":
        raise SettingsError(f"--task must be one of {', '.join(TASKS)}, not {task!r}.")
    elif photos:
        raise SettingsError("--photos is a detection or segmentation demo: add --task detection (or segmentation).")
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
def run_once(params: ParamsOption = Path("params.yaml"), project: ProjectOption = None) -> None:
    """Run one flywheel iteration now: poll, and if enough changed, snapshot -> ... -> write back;
    then the strategy report when the iteration left it out of date."""
    _loop_settings()
    params = _attached(params, project)
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


RecheckOption = Annotated[bool, typer.Option(help="Check again even if this snapshot was checked.")]


@app.command("errors")
@clear_errors
def errors_now(params: ParamsOption = Path("params.yaml"), force: RecheckOption = False) -> None:
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
    images: Annotated[Path | None, typer.Option(help="A COCO file's image folder: its file_names are relative to it "
                                                      "(default: beside the file, then its images/).")] = None,
) -> None:
    """Boxes, masks, or masks with the assistant? Train each on the same images at params.yaml's
    strategy.hours of annotation and say which reaches strategy.target on strategy.metric sooner, by how
    many hours, or that it is too early to tell. Images come from the project (labeled with masks; timed by
    Label Studio's lead_time) or from --dataset (timed by params.yaml's published costs); masks with the
    assistant are timed by a simulated person correcting GrabCut's masks with clicks."""
    import json

    from components.core.params import load_params
    from components.studies import strategy

    settings = _settings()
    loaded = load_params(params)
    suggestions = None
    if dataset:
        from components.production.assist import seconds_with_assistant

        costs = loaded.strategy.mask_costs()
        typer.echo(f"Simulating a person making each image's masks with the assistant (GrabCut, up to {costs.max_clicks} clicks)")
        items = strategy.from_dataset(
            dataset, settings.workspace / "datasets", count, loaded.strategy.seconds_per_object, images_dir=images,
            assisted=lambda image, target: seconds_with_assistant(image, target, costs, loaded.images.max_pixels), progress=typer.echo,
        )
        folder = out or settings.workspace / "reports" / f"strategy-{Path(dataset).stem}"
        title = f"{Path(dataset).stem}: boxes, masks, or masks with the assistant"
        labels = sorted({box["label"] for item in items for box in json.loads(item.target)["boxes"]}, key=lambda x: (len(x), x))
    else:
        from components.loop.insight import strategy_items, strategy_suggestions
        from components.loop.workspace import open_workspace, reports_dir

        ws = open_workspace(_loop_settings(), loaded, project_root=params.parent)
        items = strategy_items(ws)
        suggestions = strategy_suggestions(ws)
        folder = out or reports_dir(ws) / "strategy"
        title = f"{ws.project.title}: boxes, masks, or masks with the assistant"
        labels = list(ws.project.config.labels)
    if len(items) < 3 * strategy.MIN_IMAGES:
        raise FlywheelError(f"Only {len(items)} images labeled with masks; label at least {3 * strategy.MIN_IMAGES} to compare strategies.")
    pool, held_out = strategy.split(items, loaded.strategy.held_out)
    typer.echo(f"{len(pool)} images to label, {len(held_out)} held out; budgets {loaded.strategy.hours} h")
    points, verdicts = strategy.compare(pool, held_out, labels, loaded.strategy, loaded.architectures, progress=typer.echo)
    path = strategy.write(points, verdicts, folder, title, loaded.strategy.seconds_per_object, suggestions)
    for verdict in verdicts.values():
        typer.echo(verdict.sentence)
    typer.echo(f"Comparison: {path}")


@app.command("serve")
@clear_errors
def serve(params: ParamsOption = Path("params.yaml"), project: ProjectOption = None) -> None:
    """Serve the loop: answer Label Studio's webhooks within seconds, poll as a safety net, retrain on
    retrain.cron (Ctrl-C stops)."""
    settings = _loop_settings()
    params = _attached(params, project)
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
