"""One iteration of the flywheel: ingest (poll -> snapshot -> validate -> version) -> train (train ->
register) -> publish (predict + rank -> write back) -> insight (report)."""

from __future__ import annotations

import logging

from prefect import flow

from components.adapters.label_studio import ChangeSet
from components.adapters.versioning import SnapshotVersion
from components.learning.training import TrainedModel
from components.loop.workspace import Workspace, refreshing
from flows import tasks
from flows.common import CURSOR_LOCK, PUBLISH_LOCK, REFRESH_LOCK, one_at_a_time, report_failure, unless_busy
from flows.runtime import interrupted

log = logging.getLogger("flows.flywheel")  # by name: Prefect loads a served flow's file under another module name


def version_new_labels(ws: Workspace, summary: dict[str, object]) -> None:
    """Ingest: poll the annotations changed since the cursor and, when there are enough, version them
    as the next snapshot (`poll.min_new_annotations`; before the first model, any: each may be the
    label that lets training start)."""
    with one_at_a_time(ws, CURSOR_LOCK):  # serial: the cursor moves in the snapshot's commit
        latest = ws.data.latest()  # still the latest at `version`: only a holder of this lock versions
        changes = tasks.poll(ws, latest)
        summary["changed_tasks"] = len(changes.tasks)
        if ws.params.poll.enough_changes(len(changes.tasks), lambda: ws.models.champion() is not None):
            summary["snapshot"] = version_changes(ws, latest, changes).rev


def version_changes(ws: Workspace, latest: SnapshotVersion | None, changes: ChangeSet) -> SnapshotVersion:
    """Build the next snapshot aside from `latest`, validate it, version it; list what needs a person's attention."""
    with ws.data.stage() as folder:
        staged = tasks.snapshot(ws, latest, changes, folder)
        versioned = tasks.version(ws, staged, changes, tasks.validate(ws, staged))
    tasks.publish_needs_attention(ws, versioned)
    return versioned


def refresh_until_caught_up(ws: Workspace, progress: bool, warm: bool, summary: dict[str, object]) -> None:
    """Train a model of the latest snapshot when it needs one and refresh the pre-annotations; again
    while runs that found this one busy versioned newer snapshots meanwhile. Called holding `REFRESH_LOCK`."""
    latest, labeled_set_changed = ws.data.latest(), summary["snapshot"] is not None
    while True:
        trained = None
        if latest is not None and tasks.ready_to_train(ws, latest):  # unlocked: it reads the snapshot by its revision
            trained = tasks.train(ws, latest, ws.params.train.architecture, progress, warm=warm)
        with one_at_a_time(ws, PUBLISH_LOCK):  # serial: the champion alias, one version's write-back
            register_and_publish(ws, latest, trained, labeled_set_changed, summary)
        newer = ws.data.latest()
        if newer is None or latest is None or newer.rev == latest.rev:
            return
        latest, labeled_set_changed = newer, True  # labels came meanwhile: the runs that versioned them left the rest to this one
        summary["caught_up_to"] = newer.rev


def register_and_publish(
    ws: Workspace, latest: SnapshotVersion | None, trained: TrainedModel | None, labeled_set_changed: bool,
    summary: dict[str, object],
) -> None:
    """Register `trained` (unless another run registered a model of the same snapshot `latest` meanwhile)
    and refresh the pre-annotations (the ranking too when `labeled_set_changed`); called holding `PUBLISH_LOCK`."""
    if trained is not None and latest is not None and tasks.trained_run(ws, latest) is not None:
        log.info("Another worker registered a model of %s meanwhile: this one is not registered.", latest.rev)
        trained = None
    if trained is not None:
        promotion = tasks.register(ws, trained)
        summary.update(trained=True, promoted=promotion.promoted, score=promotion.candidate_score, metric=ws.task.metric_title)
        champion = promotion.champion  # the alias moves only under this lock: still the champion
    else:
        champion = ws.models.champion()
    current = ws.data.latest()  # the labels as they are now (newer than `latest` if people labeled meanwhile)
    summary["champion"], written = tasks.refresh_preannotations(ws, champion, current, labeled_set_changed, trained)
    summary["written"] = int(summary.get("written") or 0) + written
    if summary["champion"] is None and labeled_set_changed:
        tasks.publish_cold_start(ws, current)  # no model yet: "Label next" from the pretrained backbone alone


def report_when_idle(ws: Workspace, summary: dict[str, object]) -> None:
    """Insight: the strategy report for the latest snapshot and champion, once, when the run neither
    versioned nor trained (it never delays fresh pre-annotations)."""
    champion = ws.models.champion()
    if champion is None or summary["snapshot"] is not None or summary["trained"]:
        return
    latest = ws.data.latest()
    if not tasks.reported(ws, champion, latest):
        summary["report"] = str(tasks.report(ws, champion, latest)[1])


@flow(name="flywheel-iteration", log_prints=True, on_failure=[report_failure], persist_result=True)
def flywheel_iteration(
    params_path: str = "params.yaml", warm: bool = True, progress: bool = True, trigger: str = "manual"
) -> dict[str, object]:
    """Turn fresh Label Studio annotations into a new model (fine-tuned from the champion when `warm`),
    refreshed pre-annotations and a report (`progress`: a progress bar while training; `trigger`: what
    started the run, kept in Prefect's history)."""
    ws = tasks.workspace(params_path)
    summary: dict[str, object] = {"changed_tasks": 0, "snapshot": None, "trained": False, "written": 0}
    with refreshing(ws):  # meanwhile the project's background pretraining waits between its batches
        version_new_labels(ws, summary)  # ingest: poll -> snapshot -> validate -> version
        with unless_busy(REFRESH_LOCK) as free:  # train -> register -> publish (predict, rank, write back)
            if free:
                refresh_until_caught_up(ws, progress, warm, summary)
            elif summary["snapshot"] is not None:
                summary["left_to_another_run"] = summary["snapshot"]
                log.info("Another run is training and refreshing pre-annotations: it does so for %s before it ends.",
                         summary["snapshot"])
    if summary["trained"] and ws.params.retrain.growth:  # `flywheel serve` starts the background retrain
        summary["retrain_due"] = tasks.retrain_snapshot(ws) is not None
    report_when_idle(ws, summary)  # insight
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
    ws = tasks.workspace(params_path)
    with one_at_a_time(ws, PUBLISH_LOCK):  # never deletes while a version is being written
        return {"deleted": tasks.tidy(ws, interrupted), "interrupted": interrupted()}
