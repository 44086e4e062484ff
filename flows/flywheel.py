"""One iteration of the flywheel: poll -> snapshot -> validate -> version -> train -> register -> predict + rank -> write back -> report."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NONE

from components import iteration
from components.iteration import Workspace
from flows.common import connect, one_at_a_time

poll = task(iteration.poll, retries=3, retry_delay_seconds=5, cache_policy=NONE)
snapshot = task(iteration.snapshot, cache_policy=NONE)
validate = task(iteration.validate, cache_policy=NONE)
version = task(iteration.version, retries=2, retry_delay_seconds=5, cache_policy=NONE)
trained_run = task(iteration.trained_run, retries=3, retry_delay_seconds=5, cache_policy=NONE)
train = task(iteration.train, cache_policy=NONE)
register = task(iteration.register, retries=2, retry_delay_seconds=5, cache_policy=NONE)
predictions_stale = task(iteration.predictions_stale, retries=3, retry_delay_seconds=5, cache_policy=NONE)
write_back = task(iteration.write_back, retries=3, retry_delay_seconds=5, cache_policy=NONE)
reported = task(iteration.reported, retries=3, retry_delay_seconds=5, cache_policy=NONE)
report = task(iteration.report, retries=2, retry_delay_seconds=5, cache_policy=NONE)


def refresh_preannotations(ws: Workspace, labeled_set_changed: bool = False) -> tuple[str | None, int]:
    """Write the champion's predictions and label-next ranking when Label Studio does not show them yet,
    or when the labeled set changed (the ranking depends on it): (champion, written)."""
    champion = ws.models.champion()
    if champion is None:
        return None, 0
    written = write_back(ws, champion) if labeled_set_changed or predictions_stale(ws, champion) else 0
    return champion.model_version, written


@flow(name="flywheel-iteration", log_prints=True)
def flywheel_iteration(params_path: str = "params.yaml") -> dict[str, object]:
    """Turn fresh Label Studio annotations into a new model, refreshed pre-annotations and a report."""
    ws = connect(params_path)
    summary: dict[str, object] = {"changed_tasks": 0, "snapshot": None, "trained": False, "written": 0}
    with one_at_a_time():
        changes = poll(ws)
        summary["changed_tasks"] = len(changes.tasks)
        if len(changes.tasks) >= ws.params.poll.min_new_annotations and validate(ws, snapshot(ws, changes)):
            summary["snapshot"] = version(ws, changes).rev
        latest = ws.data.latest()
        if latest is not None and trained_run(ws, latest) is None:
            promotion = register(ws, train(ws, latest, ws.params.train.architecture))
            summary.update(trained=True, promoted=promotion.promoted, accuracy=promotion.candidate_accuracy)
        summary["champion"], summary["written"] = refresh_preannotations(ws, summary["snapshot"] is not None)
        champion = ws.models.champion()
        idle = summary["snapshot"] is None and not summary["trained"]  # never delays fresh pre-annotations
        if champion is not None and idle and not reported(ws, champion):
            summary["report"] = str(report(ws, champion)[1])
    print(summary)
    return summary
