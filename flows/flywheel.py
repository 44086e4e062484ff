"""One iteration of the flywheel: poll -> snapshot -> validate -> version -> train -> register -> predict + rank -> write back -> report."""

from __future__ import annotations

import logging
from pathlib import Path
from uuid import UUID

from prefect import flow, get_client
from prefect.runtime import flow_run

from components.loop import iteration
from components.core.faults import owner
from components.loop.iteration import Workspace, WorkspaceCache
from components.adapters.label_studio import ChangeSet
from components.core.params import load_params
from components.core.settings import load_settings
from components.learning.training import TrainedModel
from components.adapters.versioning import SnapshotVersion
from flows.common import (
    CURSOR_LOCK, OWNER_LABEL, PUBLISH_LOCK, REFRESH_LOCK, connect, io_task, one_at_a_time, report_failure, step, unless_busy,
)
from flows.worker import interrupted, warm_workspaces

poll = io_task(iteration.poll)
snapshot = io_task(iteration.snapshot)
validate = step(iteration.validate)
version = io_task(iteration.version)
log = logging.getLogger("flows.flywheel")  # by name: Prefect loads a served flow's file under another module name

publish_needs_attention = io_task(iteration.publish_needs_attention)
ready_to_train = io_task(iteration.ready_to_train)
trained_run = io_task(iteration.trained_run)
train = step(iteration.train)
register = io_task(iteration.register)
predictions_stale = io_task(iteration.predictions_stale)
write_back = io_task(iteration.write_back)
reported = io_task(iteration.reported)
report = io_task(iteration.report)
tidy = io_task(iteration.tidy)
publish_cold_start = io_task(iteration.publish_cold_start)


@io_task
def reuse_workspace(params_path: str, workspaces: WorkspaceCache) -> Workspace:
    """`connect` in the warm worker: label this flow run with its process, as `connect` does, and take
    the workspace an earlier run opened while settings, params and the labeling config are unchanged."""
    if flow_run.id:
        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(UUID(str(flow_run.id)), {OWNER_LABEL: owner()})
    path = Path(params_path)
    return workspaces.open(load_settings(), load_params(path), project_root=path.parent)


def workspace(params_path: str) -> Workspace:
    """The run's workspace: in the warm worker, the one its earlier runs opened; elsewhere a fresh one."""
    workspaces = warm_workspaces()
    return connect(params_path) if workspaces is None else reuse_workspace(params_path, workspaces)


def version_changes(ws: Workspace, changes: ChangeSet) -> SnapshotVersion:
    """Build the next snapshot aside, validate it, version it; list what needs a person's attention."""
    with ws.data.stage() as folder:
        staged = snapshot(ws, changes, folder)
        versioned = version(ws, staged, changes, validate(ws, staged))
    publish_needs_attention(ws)
    return versioned


def refresh_preannotations(
    ws: Workspace, labeled_set_changed: bool = False, trained: TrainedModel | None = None
) -> tuple[str | None, int]:
    """Write the champion's predictions and label-next ranking when Label Studio does not show them yet,
    or when the labeled set changed (the ranking depends on it): (champion, written). `trained`, when it
    is the champion, is used as it is rather than loaded back."""
    champion = ws.models.champion()
    if champion is None:
        return None, 0
    model = trained.model if trained is not None and champion.run_id == trained.run_id else None
    written = write_back(ws, champion, model) if labeled_set_changed or predictions_stale(ws, champion) else 0
    return champion.model_version, written


def refresh_until_caught_up(ws: Workspace, progress: bool, warm: bool, summary: dict[str, object]) -> None:
    """Train a model of the latest snapshot when it needs one and refresh the pre-annotations; again
    while runs that found this one busy versioned newer snapshots meanwhile. Called holding `REFRESH_LOCK`."""
    latest, labeled_set_changed = ws.data.latest(), summary["snapshot"] is not None
    while True:
        trained = None
        if latest is not None and ready_to_train(ws, latest):  # unlocked: it reads the snapshot by its revision
            trained = train(ws, latest, ws.params.train.architecture, progress, warm=warm)
        with one_at_a_time(ws, PUBLISH_LOCK):  # serial: the champion alias, one version's write-back
            publish(ws, latest, trained, labeled_set_changed, summary)
        newer = ws.data.latest()
        if newer is None or latest is None or newer.rev == latest.rev:
            return
        latest, labeled_set_changed = newer, True  # labels came meanwhile: the runs that versioned them left the rest to this one
        summary["caught_up_to"] = newer.rev


def publish(
    ws: Workspace, latest: SnapshotVersion | None, trained: TrainedModel | None, labeled_set_changed: bool,
    summary: dict[str, object],
) -> None:
    """Register `trained` (unless another run registered a model of the same snapshot meanwhile) and
    refresh the pre-annotations (the ranking too when `labeled_set_changed`); called holding `PUBLISH_LOCK`."""
    if trained is not None and latest is not None and trained_run(ws, latest) is not None:
        log.info("Another worker registered a model of %s meanwhile: this one is not registered.", latest.rev)
        trained = None
    if trained is not None:
        promotion = register(ws, trained)
        summary.update(trained=True, promoted=promotion.promoted, score=promotion.candidate_score, metric=ws.task.metric_title)
    summary["champion"], written = refresh_preannotations(ws, labeled_set_changed, trained)
    summary["written"] = int(summary.get("written") or 0) + written
    if summary["champion"] is None and labeled_set_changed:
        publish_cold_start(ws)  # no model yet: "Label next" from the pretrained backbone alone


@flow(name="flywheel-iteration", log_prints=True, on_failure=[report_failure], persist_result=True)
def flywheel_iteration(
    params_path: str = "params.yaml", warm: bool = True, progress: bool = True, trigger: str = "manual"
) -> dict[str, object]:
    """Turn fresh Label Studio annotations into a new model (fine-tuned from the champion when `warm`),
    refreshed pre-annotations and a report (`progress`: a progress bar while training; `trigger`: what
    started the run, kept in Prefect's history)."""
    ws = workspace(params_path)
    summary: dict[str, object] = {"changed_tasks": 0, "snapshot": None, "trained": False, "written": 0}
    with iteration.refreshing(ws):  # meanwhile the project's background pretraining waits between its batches
        with one_at_a_time(ws, CURSOR_LOCK):  # serial: the cursor moves in the snapshot's commit
            changes = poll(ws)
            summary["changed_tasks"] = len(changes.tasks)
            if len(changes.tasks) >= ws.params.poll.min_new_annotations:
                summary["snapshot"] = version_changes(ws, changes).rev
        with unless_busy(REFRESH_LOCK) as free:
            if free:
                refresh_until_caught_up(ws, progress, warm, summary)
            elif summary["snapshot"] is not None:
                summary["left_to_another_run"] = summary["snapshot"]
                log.info("Another run is training and refreshing pre-annotations: it does so for %s before it ends.",
                         summary["snapshot"])
    champion = ws.models.champion()
    idle = summary["snapshot"] is None and not summary["trained"]  # never delays fresh pre-annotations
    if champion is not None and idle and not reported(ws, champion):
        summary["report"] = str(report(ws, champion)[1])
    latest = ws.data.latest()
    summary["cursor"] = latest.cursor if latest is not None else None
    if summary["snapshot"] or summary["trained"] or summary["written"]:
        log.info(describe_iteration(summary))
    return summary


def describe_iteration(summary: dict[str, object]) -> str:
    """One line for what an iteration did."""
    parts = [f"{summary['changed_tasks']} changed task(s)"]
    if summary.get("snapshot"):
        parts.append(f"versioned {summary['snapshot']}")
    if summary.get("trained"):
        verdict = "now the champion" if summary.get("promoted") else "the champion stays"
        parts.append(f"trained a model ({summary['metric']} {summary['score']:.3f}, {verdict})")
    if summary.get("written"):
        parts.append(f"wrote {summary['written']} pre-annotations of {summary['champion']}")
    return "; ".join(parts) + "."


@flow(name="flywheel-tidy", log_prints=True, on_failure=[report_failure], persist_result=True)
def tidy_predictions(params_path: str = "params.yaml", trigger: str = "manual") -> dict[str, object]:
    """Delete superseded pre-annotations from the unlabeled tasks while the loop is idle (yields to new labels)."""
    ws = workspace(params_path)
    with one_at_a_time(ws, PUBLISH_LOCK):  # never deletes while a version is being written
        return {"deleted": tidy(ws, interrupted), "interrupted": interrupted()}
