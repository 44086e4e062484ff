"""One iteration of the flywheel: poll -> snapshot -> validate -> version -> train -> register -> predict + rank -> write back -> report."""

from __future__ import annotations

import logging

from prefect import flow

from components import iteration
from components.iteration import Workspace
from components.label_studio import ChangeSet
from components.versioning import SnapshotVersion
from flows.common import connect, io_task, one_at_a_time, report_failure, step

poll = io_task(iteration.poll)
snapshot = io_task(iteration.snapshot)
validate = step(iteration.validate)
version = io_task(iteration.version)
log = logging.getLogger("flows.flywheel")  # by name: Prefect loads a served flow's file under another module name

publish_needs_attention = io_task(iteration.publish_needs_attention)
ready_to_train = io_task(iteration.ready_to_train)
train = step(iteration.train)
register = io_task(iteration.register)
predictions_stale = io_task(iteration.predictions_stale)
write_back = io_task(iteration.write_back)
reported = io_task(iteration.reported)
report = io_task(iteration.report)


def version_changes(ws: Workspace, changes: ChangeSet) -> SnapshotVersion:
    """Build the next snapshot aside, validate it, version it; list what needs a person's attention."""
    with ws.data.stage() as folder:
        staged = snapshot(ws, changes, folder)
        versioned = version(ws, staged, changes, validate(ws, staged))
    publish_needs_attention(ws)
    return versioned


def refresh_preannotations(ws: Workspace, labeled_set_changed: bool = False) -> tuple[str | None, int]:
    """Write the champion's predictions and label-next ranking when Label Studio does not show them yet,
    or when the labeled set changed (the ranking depends on it): (champion, written)."""
    champion = ws.models.champion()
    if champion is None:
        return None, 0
    written = write_back(ws, champion) if labeled_set_changed or predictions_stale(ws, champion) else 0
    return champion.model_version, written


@flow(name="flywheel-iteration", log_prints=True, on_failure=[report_failure])
def flywheel_iteration(params_path: str = "params.yaml") -> dict[str, object]:
    """Turn fresh Label Studio annotations into a new model, refreshed pre-annotations and a report."""
    ws = connect(params_path)
    summary: dict[str, object] = {"changed_tasks": 0, "snapshot": None, "trained": False, "written": 0}
    with one_at_a_time(ws):
        changes = poll(ws)
        summary["changed_tasks"] = len(changes.tasks)
        if len(changes.tasks) >= ws.params.poll.min_new_annotations:
            summary["snapshot"] = version_changes(ws, changes).rev
        latest = ws.data.latest()
        if latest is not None and ready_to_train(ws, latest):
            promotion = register(ws, train(ws, latest, ws.params.train.architecture))
            summary.update(trained=True, promoted=promotion.promoted, score=promotion.candidate_score, metric=ws.task.metric_title)
        summary["champion"], summary["written"] = refresh_preannotations(ws, summary["snapshot"] is not None)
        champion = ws.models.champion()
        idle = summary["snapshot"] is None and not summary["trained"]  # never delays fresh pre-annotations
        if champion is not None and idle and not reported(ws, champion):
            summary["report"] = str(report(ws, champion)[1])
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
