"""The steps of one flywheel iteration, as plain functions over a `Workspace` (no Prefect here).

The flows in `flows/` wire these in order; a notebook or a test can call them directly:

    poll -> snapshot -> validate -> version -> train -> register -> predict -> write back

Every step is safe to repeat: the cursor lives in the snapshot's registry commit, training is
skipped for a snapshot that already has a registered model, and write-back replaces its model
version. So a rerun after a crash at any point finishes the job without duplicating anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from components.errors import DataError
from components.label_studio import ChangeSet, LabelStudio, Project
from components.labeling_config import load_labeling_config
from components.params import Params
from components.prediction import predict_images
from components.registry import ModelRegistry, Promotion, RegisteredModel
from components.settings import Settings
from components.snapshot import apply_changes, read_manifest, write_snapshot
from components.training import TrainedModel, fit
from components.validation import validate_snapshot
from components.versioning import DataRegistry, SnapshotVersion

log = logging.getLogger(__name__)

TAG_MD5 = "flywheel.dvc_md5"


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


def trained_run(ws: Workspace, snapshot_version: SnapshotVersion) -> str | None:
    """The run id of a registered model trained on this snapshot by the loop's architecture, if any."""
    client = MlflowClient(ws.settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(ws.params.registry.experiment)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=(
            f"tags.`{TAG_MD5}` = '{snapshot_version.md5}' and tags.`flywheel.architecture` = "
            f"'{ws.params.train.architecture}' and tags.`flywheel.registered_version` != ''"
        ),
        max_results=1,
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
    """Log and register the model; move `champion` if it beats the champion on the same val set."""
    registered = ws.models.register(trained.model, trained.run_id)
    client = MlflowClient(ws.settings.mlflow_tracking_uri)
    client.set_tag(trained.run_id, "flywheel.registered_version", str(registered.version))
    promotion = ws.models.promote_if_better(registered, trained.model, trained.val_images, trained.val_targets)
    client.set_tag(trained.run_id, "flywheel.promoted", str(promotion.promoted).lower())
    return promotion


def predictions_stale(ws: Workspace, champion: RegisteredModel) -> bool:
    """True when Label Studio does not show the champion's predictions yet."""
    shown = ws.label_studio.shown_model_version(ws.project.id)
    written = ws.label_studio.model_versions(ws.project.id).get(champion.model_version, 0)
    return shown != champion.model_version or written == 0


def write_back(ws: Workspace, champion: RegisteredModel) -> int:
    """Predict every unlabeled task with the champion, write the predictions, show that version.

    Returns:
        The number of predictions written.
    """
    model = ws.models.load(champion)
    tasks = ws.label_studio.unlabeled_tasks(ws.project.id)
    images = {task_id: ws.label_studio.image_path(data, ws.project.config) for task_id, data in tasks.items()}
    predictions = predict_images(model, images, ws.params.predict.batch_size)
    missing = sorted(set(images) - {p.task_id for p in predictions})
    if missing:
        log.warning("%d tasks have no readable image and got no prediction: %s", len(missing), missing[:20])
    written = ws.label_studio.write_predictions(ws.project, predictions, champion.model_version)
    ws.label_studio.show_model_version(ws.project.id, champion.model_version)
    return written
