"""The loop's stages as Prefect tasks (`io_task`: talks to a server, retried when that may pass;
`step`: runs here), the run's workspace, and the write-back decision two flows share.

Flows call them as `tasks.NAME(...)`, so a test that patches one patches it here."""

from __future__ import annotations

from pathlib import Path


from components.adapters.registry import RegisteredModel
from components.adapters.versioning import SnapshotVersion
from components.core.params import load_params
from components.core.settings import load_settings
from components.learning.training import TrainedModel
from components.loop import ingest, insight, pool, publish, quality
from components.loop import train as training
from components.loop.workspace import Workspace, WorkspaceCache
from flows.common import connect, io_task, label_owner, step
from flows.runtime import warm_workspaces

poll = io_task(ingest.poll)
snapshot = io_task(ingest.snapshot)
validate = step(ingest.validate)
version = io_task(ingest.version)
publish_needs_attention = io_task(publish.publish_needs_attention)
ready_to_train = io_task(training.ready_to_train)
trained_run = io_task(training.trained_run)
retrain_snapshot = io_task(training.retrain_snapshot)
train = step(training.train)
register = io_task(training.register)
predictions_stale = io_task(publish.predictions_stale)
write_back = io_task(publish.write_back)
reported = io_task(insight.reported)
report = io_task(insight.report)
tidy = io_task(publish.tidy)
publish_cold_start = io_task(publish.publish_cold_start)


@io_task
def reuse_workspace(params_path: str, workspaces: WorkspaceCache) -> Workspace:
    """`connect` in the warm worker: the workspace an earlier run opened while settings, params and the
    labeling config are unchanged."""
    path = Path(params_path)
    return workspaces.open(load_settings(), load_params(path), project_root=path.parent)


def workspace(params_path: str) -> Workspace:
    """The run's workspace: in the warm worker, the one its earlier runs opened; elsewhere a fresh one."""
    workspaces = warm_workspaces()
    if workspaces is None:
        return connect(params_path)
    label_owner()
    return reuse_workspace(params_path, workspaces)
labels_checked = io_task(quality.labels_checked)
check_labels = step(quality.check_labels)
image_pool = io_task(pool.image_pool)
pretraining_due = io_task(pool.pretraining_due)
version_pool = io_task(pool.version_pool)
pretrain_backbone = step(pool.pretrain_backbone)


def refresh_preannotations(
    ws: Workspace, champion: RegisteredModel | None, latest: SnapshotVersion | None, labeled_set_changed: bool = False,
    trained: TrainedModel | None = None,
) -> tuple[str | None, int]:
    """Write the champion's predictions and label-next ranking when Label Studio does not show them yet,
    or when the labeled set changed (the ranking depends on it): (champion, written). `latest`: the last
    versioned snapshot; `trained`, when it is the champion, is used as it is rather than loaded back."""
    if champion is None:
        return None, 0
    model = trained.model if trained is not None and champion.run_id == trained.run_id else None
    written = write_back(ws, champion, latest, model) if labeled_set_changed or predictions_stale(ws, champion, latest) else 0
    return champion.model_version, written
