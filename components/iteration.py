"""The steps of one flywheel iteration, as plain functions over a `Workspace` (no Prefect here).

The flows in `flows/` wire these in order; a notebook or a test can call them directly:

    poll -> snapshot -> validate -> version -> train -> register -> predict + rank -> write back -> report

and, on its own schedule, `check_labels` (k-fold error finding) followed by another write back.

Every step is safe to repeat: the cursor lives in the snapshot's registry commit, training is
skipped for a snapshot that already has a registered model, and write-back replaces its model
version. So a rerun after a crash at any point finishes the job without duplicating anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from components.conversions import Prediction
from components.errors import DataError
from components.label_errors import find_label_errors
from components.label_studio import ChangeSet, LabelStudio, Project
from components.labeling_config import load_labeling_config
from components.params import Params
from components.prediction import infer_images
from components.registry import ModelRegistry, Promotion, RegisteredModel
from components.report import LearningPoint, Report, build_report, measure_acceptance, write_report
from components.selection import priorities, rank_for_labeling
from components.settings import Settings
from components.snapshot import apply_changes, read_manifest, write_snapshot
from components.training import InferenceModel, TrainedModel, evaluate, fit, load_images
from components.validation import validate_snapshot
from components.versioning import DataRegistry, SnapshotVersion

log = logging.getLogger(__name__)

TAG_MD5 = "flywheel.dvc_md5"
TAG_KIND = "flywheel.kind"
LABEL_NEXT_VIEW = "Label next"
SUSPECTS_VIEW = "Suspected label errors"
SUSPECT_MARK = "flywheel-label-error"  # the result id of a suspect's prediction, what its view filters on


@dataclass(frozen=True)
class Workspace:
    """Everything one iteration talks to, built once from settings and params."""

    settings: Settings
    params: Params
    label_studio: LabelStudio
    project: Project
    data: DataRegistry
    models: ModelRegistry


def open_workspace(settings: Settings, params: Params, project_root: Path = Path(".")) -> Workspace:
    """Connect to Label Studio, find (or create) the project, open its data registry."""
    label_studio = LabelStudio.from_settings(settings)
    config = load_labeling_config(project_root / params.project.config)
    project = label_studio.ensure_project(params.project.title, config)
    data = DataRegistry(settings.workspace / "registry" / f"project-{project.id}", settings.dvc_remote).open()
    return Workspace(
        settings=settings,
        params=params,
        label_studio=label_studio,
        project=project,
        data=data,
        models=ModelRegistry(settings.mlflow_tracking_uri, params.registry.model_name),
    )


def reports_dir(ws: Workspace) -> Path:
    """Where the project's label-error table and strategy report live in the workspace."""
    return ws.settings.workspace / "reports" / f"project-{ws.project.id}"


def poll(ws: Workspace) -> ChangeSet:
    """Annotations changed since the cursor of the last versioned snapshot."""
    latest = ws.data.latest()
    return ws.label_studio.fetch_changed(ws.project.id, latest.cursor if latest else None)


def snapshot(ws: Workspace, changes: ChangeSet) -> pd.DataFrame:
    """Apply the changes to the last snapshot and write the new one into the registry's working copy.

    Raises:
        AnnotationError: Some annotations cannot be trained on; the message names every such task.
    """
    manifest = apply_changes(
        read_manifest(ws.data.snapshot_dir), changes.tasks, ws.project.config, ws.params.snapshot.val_percent
    )
    sources = {
        str(t.data["sha256"]): ws.label_studio.image_path(t.data, ws.project.config)
        for t in changes.tasks
        if "sha256" in t.data
    }
    write_snapshot(manifest, sources, ws.data.snapshot_dir)
    return manifest


def validate(ws: Workspace, manifest: pd.DataFrame) -> bool:
    """Gate the snapshot on the data contract.

    Returns:
        True when it may be trained on; False when the data is sound but some classes do not have
        `validate.min_per_class` labels yet (the iteration waits for more, nothing is lost).

    Raises:
        DataError: The contract is broken; the message lists the failures and the tasks at fault.
    """
    report = validate_snapshot(
        manifest, ws.data.snapshot_dir, ws.project.config.labels, ws.params.validate_.min_per_class
    )
    if report.only_too_few:
        log.warning("Waiting for labels before training: %s", "; ".join(report.failures))
        return False
    if not report.success:
        raise DataError(f"Not training: {report.describe()}", list(report.task_ids))
    return True


def version(ws: Workspace, changes: ChangeSet) -> SnapshotVersion:
    """Version the snapshot with DVC, push it, and advance the cursor in the same commit."""
    return ws.data.commit(ws.project.id, changes.cursor, ws.project.title)


def _experiment_id(client: MlflowClient, ws: Workspace) -> str | None:
    """The id of the loop's MLflow experiment (params.yaml registry.experiment), None before it exists."""
    experiment = client.get_experiment_by_name(ws.params.registry.experiment)
    return experiment.experiment_id if experiment else None


def _search_runs(ws: Workspace, filter_string: str, max_results: int = 1) -> list[Run]:
    """Runs of the loop's experiment matching an MLflow filter (none while the experiment does not exist)."""
    client = MlflowClient(ws.settings.mlflow_tracking_uri)
    experiment_id = _experiment_id(client, ws)
    if experiment_id is None:
        return []
    return client.search_runs([experiment_id], filter_string=filter_string, max_results=max_results)


def trained_run(ws: Workspace, snapshot_version: SnapshotVersion) -> str | None:
    """The run id of a registered model trained on this snapshot by the loop's architecture, if any."""
    runs = _search_runs(
        ws,
        f"tags.`{TAG_MD5}` = '{snapshot_version.md5}' and tags.`flywheel.architecture` = "
        f"'{ws.params.train.architecture}' and tags.`flywheel.registered_version` != ''",
    )
    return runs[0].info.run_id if runs else None


def run_tags(ws: Workspace, snapshot_version: SnapshotVersion, architecture: str) -> dict[str, str]:
    """What links a model to its data: DVC hash and rev, registry, Label Studio project, cursor."""
    return {
        TAG_MD5: snapshot_version.md5,
        "flywheel.dvc_rev": snapshot_version.rev,
        "flywheel.dvc_commit": snapshot_version.commit,
        "flywheel.data_registry": str(snapshot_version.registry),
        "flywheel.label_studio_project": str(ws.project.id),
        "flywheel.label_studio_url": ws.settings.label_studio_url,
        "flywheel.cursor": snapshot_version.cursor or "",
        "flywheel.architecture": architecture,
        "mlflow.runName": f"{architecture}@{snapshot_version.rev}",
    }


def train(ws: Workspace, snapshot_version: SnapshotVersion, architecture: str, progress: bool = True) -> TrainedModel:
    """Train one architecture on the snapshot in the registry's working copy."""
    p = ws.params.train
    return fit(
        ws.data.snapshot_dir,
        read_manifest(ws.data.snapshot_dir),
        ws.project.config.labels,
        architecture,
        ws.params.architectures.get(architecture, {}),
        image_size=p.image_size,
        batch_size=p.batch_size,
        max_epochs=p.max_epochs,
        min_steps=p.min_steps,
        patience=p.patience,
        lr=p.lr,
        augment=p.augment,
        seed=p.seed,
        tracking_uri=ws.settings.mlflow_tracking_uri,
        experiment=ws.params.registry.experiment,
        run_tags=run_tags(ws, snapshot_version, architecture),
        progress=progress,
    )


def register(ws: Workspace, trained: TrainedModel) -> Promotion:
    """Log and register the model; move `champion` if it does better on the same val set."""
    registered = ws.models.register(trained.model, trained.run_id)
    client = MlflowClient(ws.settings.mlflow_tracking_uri)
    client.set_tag(trained.run_id, "flywheel.registered_version", str(registered.version))
    promotion = ws.models.promote_if_better(registered, trained.model, trained.val_images, trained.val_targets)
    client.set_tag(trained.run_id, "flywheel.promoted", str(promotion.promoted).lower())
    return promotion


def predictions_stale(ws: Workspace, champion: RegisteredModel) -> bool:
    """True when Label Studio does not show the champion's predictions yet, and there is something to
    predict (an unlabeled task or a suspect): a fully labeled project is not rewritten every poll."""
    shown = ws.label_studio.shown_model_version(ws.project.id)
    written = ws.label_studio.model_versions(ws.project.id).get(champion.model_version, 0)
    if shown == champion.model_version and written > 0:
        return False
    return bool(ws.label_studio.unlabeled_tasks(ws.project.id)) or bool(suspect_predictions(ws))


def _embed_labeled(ws: Workspace, model: InferenceModel) -> np.ndarray:
    """Embeddings of the latest snapshot's images: what selection keeps its distance from."""
    manifest = read_manifest(ws.data.snapshot_dir)
    images = load_images([ws.data.snapshot_dir / p for p in manifest["image"]], model.image_size)
    with torch.no_grad():
        chunks = [model.probabilities_and_embeddings(chunk)[1] for chunk in images.split(512)]
    return torch.cat(chunks).numpy() if chunks else np.empty((0, 0))


def suspect_predictions(ws: Workspace) -> list[Prediction]:
    """The last error check's suspects whose label is still the one it doubted, as predictions of the
    label the out-of-fold model suggests, scored by how suspect they are (1 - label quality)."""
    path = reports_dir(ws) / "label_errors.parquet"
    if not path.is_file():
        return []
    table = pd.read_parquet(path)
    current = read_manifest(ws.data.snapshot_dir)
    still = table[table["suspected"]].merge(current[["task_id", "label"]], on=["task_id", "label"])
    return [
        Prediction(task_id=int(r.task_id), label=str(r.suggested), score=round(1.0 - float(r.quality), 4), region_id=SUSPECT_MARK)
        for r in still.itertuples()
    ]


def publish_views(ws: Workspace, label_next_cutoff: float) -> dict[str, int]:
    """The two Data Manager tabs people work from. Returns title -> view id."""
    labeled = {"filter": "filter:tasks:total_annotations", "type": "Number"}
    score = {"filter": "filter:tasks:predictions_score", "type": "Number"}
    by_score = ["-tasks:predictions_score"]
    return {
        LABEL_NEXT_VIEW: ws.label_studio.ensure_view(
            ws.project.id, LABEL_NEXT_VIEW,
            [{**labeled, "operator": "equal", "value": 0}, {**score, "operator": "greater_or_equal", "value": label_next_cutoff}],
            by_score,
        ),
        SUSPECTS_VIEW: ws.label_studio.ensure_view(
            ws.project.id, SUSPECTS_VIEW,
            [
                {**labeled, "operator": "greater", "value": 0},
                {"filter": "filter:tasks:predictions_results", "type": "String", "operator": "contains", "value": SUSPECT_MARK},
                {**score, "operator": "greater", "value": 0},
            ],
            by_score,
        ),
    }


def write_back(ws: Workspace, champion: RegisteredModel) -> int:
    """Predict and rank every unlabeled task with the champion and write it all as one model version.

    Each unlabeled task gets the champion's label, scored by its label-next priority (1 = label
    first: uncertain, and unlike what is labeled or picked already). Each suspected label error
    of the last error check gets the out-of-fold model's label, scored by how suspect it is. Label
    Studio shows that version, and the "Label next" and "Suspected label errors" tabs sort by score.

    Returns:
        The number of predictions written.
    """
    model = ws.models.load(champion)
    tasks = ws.label_studio.unlabeled_tasks(ws.project.id)
    images = {task_id: ws.label_studio.image_path(data, ws.project.config) for task_id, data in tasks.items()}
    outputs = infer_images(model, images, ws.params.predict.batch_size)
    missing = sorted(set(images) - set(outputs.task_ids))
    if missing:
        log.warning("%d tasks have no readable image and got no prediction: %s", len(missing), missing[:20])
    select = ws.params.select
    order = rank_for_labeling(outputs.probabilities, outputs.embeddings, _embed_labeled(ws, model), select.batch, select.candidates)
    scores = priorities(order)
    predictions = [
        Prediction(task_id=task_id, label=label, score=round(float(score), 6))
        for task_id, label, score in zip(outputs.task_ids, outputs.predicted, scores, strict=True)
    ]
    written = ws.label_studio.write_predictions(ws.project, predictions + suspect_predictions(ws), champion.model_version)
    if written:  # Label Studio refuses to show a version with no predictions (every task labeled, no suspect)
        ws.label_studio.show_model_version(ws.project.id, champion.model_version)
    cutoff = 1.0 - (select.batch - 0.5) / max(len(predictions), 1)
    publish_views(ws, cutoff)
    return written


def label_next(ws: Workspace) -> list[int]:
    """Task ids of the "Label next" tab, in its order (empty before the first model)."""
    view = ws.label_studio.view_id(ws.project.id, LABEL_NEXT_VIEW)
    return [int(t["id"]) for t in ws.label_studio.view_tasks(ws.project.id, view)] if view else []


def labels_checked(ws: Workspace, snapshot_version: SnapshotVersion) -> bool:
    """True when the label error check already ran on this snapshot."""
    return bool(_search_runs(ws, f"tags.`{TAG_KIND}` = 'label-errors' and tags.`{TAG_MD5}` = '{snapshot_version.md5}'"))


@contextmanager
def _tracked_run(ws: Workspace, tags: dict[str, str]) -> Iterator[tuple[MlflowClient, str]]:
    """A run in the loop's experiment through the client: no process-wide active experiment or run
    is set (the fluent API's global state would trip the next `start_run(run_id=...)`)."""
    client = MlflowClient(ws.settings.mlflow_tracking_uri)
    experiment_id = _experiment_id(client, ws) or client.create_experiment(ws.params.registry.experiment)
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    try:
        yield client, run_id
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)


def reported(ws: Workspace, champion: RegisteredModel) -> bool:
    """True when the strategy report for the latest snapshot and this champion exists."""
    latest = ws.data.latest()
    return latest is None or bool(_search_runs(
        ws,
        f"tags.`{TAG_KIND}` = 'report' and tags.`{TAG_MD5}` = '{latest.md5}' and "
        f"tags.`flywheel.champion` = '{champion.model_version}'",
    ))


def check_labels(
    ws: Workspace, snapshot_version: SnapshotVersion, progress: Callable[[str], None] = lambda message: None
) -> pd.DataFrame:
    """Rank every label of the snapshot by how likely it is wrong (k-fold + cleanlab), keep the table in
    the workspace for write-back, and log it to MLflow as a table with its summary metrics."""
    p, e = ws.params.train, ws.params.errors
    manifest = read_manifest(ws.data.snapshot_dir)
    table, accuracy = find_label_errors(
        ws.data.snapshot_dir, manifest, ws.project.config.labels, p.architecture,
        ws.params.architectures.get(p.architecture, {}), folds=e.folds, steps=e.steps, image_size=p.image_size,
        batch_size=p.batch_size, lr=p.lr, augment=p.augment, seed=p.seed, progress=progress,
    )
    folder = reports_dir(ws)
    folder.mkdir(parents=True, exist_ok=True)
    table.to_parquet(folder / "label_errors.parquet", index=False)
    tags = {**run_tags(ws, snapshot_version, p.architecture), TAG_KIND: "label-errors",
            "mlflow.runName": f"label-errors@{snapshot_version.rev}"}
    with _tracked_run(ws, tags) as (client, run_id):
        client.log_param(run_id, "folds", e.folds)
        client.log_param(run_id, "steps", e.steps)
        for key, value in {"labeled": len(table), "suspected": int(table["suspected"].sum()), "out_of_fold_accuracy": accuracy}.items():
            client.log_metric(run_id, key, float(value))
        client.log_table(run_id, table.drop(columns=["image"]), artifact_file="label_errors.json")
    return table


def learning_points(ws: Workspace) -> list[LearningPoint]:
    """(labels, validation accuracy) of every registered model of the loop's architecture."""
    runs = _search_runs(
        ws,
        f"tags.`flywheel.architecture` = '{ws.params.train.architecture}' and tags.`flywheel.registered_version` != ''",
        max_results=1000,
    )
    points = {}
    for run in sorted(runs, key=lambda r: r.info.start_time):
        m = run.data.metrics
        if "best_val_accuracy" in m and "train_images" in m:
            labels = int(m["train_images"] + m.get("val_images", 0))
            points[labels] = LearningPoint(labels, float(m["best_val_accuracy"]), run.data.tags.get("flywheel.dvc_rev", ""))
    return list(points.values())


def report(ws: Workspace, champion: RegisteredModel) -> tuple[Report, Path]:
    """Build the strategy report, write it into the workspace (HTML + PNGs + JSON), log it to MLflow."""
    labels = list(ws.project.config.labels)
    manifest = read_manifest(ws.data.snapshot_dir)
    val = manifest[manifest["split"] == "val"]
    model = ws.models.load(champion)
    images = load_images([ws.data.snapshot_dir / p for p in val["image"]], model.image_size)
    targets = torch.tensor([labels.index(label) for label in val["label"]], dtype=torch.long)
    confusion = evaluate(model, images, targets, len(labels))["confusion"]
    acceptance = measure_acceptance(ws.label_studio.labeled_tasks(ws.project.id), ws.project.config)
    counts = manifest["label"].value_counts().to_dict()
    result = build_report(learning_points(ws), labels, counts, confusion, acceptance, ws.params.report.target_accuracy)
    folder = reports_dir(ws) / "report"
    path = write_report(result, labels, folder, f"flywheel report: {ws.project.title}")
    latest = ws.data.latest()
    tags = {TAG_KIND: "report", "flywheel.label_studio_project": str(ws.project.id), "flywheel.champion": champion.model_version}
    if latest is not None:
        tags.update({TAG_MD5: latest.md5, "flywheel.dvc_rev": latest.rev, "mlflow.runName": f"report@{latest.rev}"})
    with _tracked_run(ws, tags) as (client, run_id):
        metrics = {"labeled": float(result.labeled)}
        if acceptance.rate is not None:
            metrics["acceptance_rate"] = acceptance.rate
        if result.labels_to_target is not None:
            metrics["labels_to_target"] = float(result.labels_to_target)
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
        client.log_artifacts(run_id, str(folder), artifact_path="report")
    return result, path
