"""The label error check: k-fold out-of-fold probabilities + cleanlab over the latest snapshot, written back."""

from __future__ import annotations

import logging

from prefect import flow

from components.loop import iteration
from flows.common import PUBLISH_LOCK, connect, io_task, one_at_a_time, report_failure, step
from flows.flywheel import write_back

labels_checked = io_task(iteration.labels_checked)
check_labels = step(iteration.check_labels)
log = logging.getLogger("flows.label_errors")  # by name: Prefect loads a served flow's file under another module name


class Interrupted(Exception):
    """New labels arrived while the check ran in the warm worker: it stops between folds, to run again when idle."""


def _fold_done(message: str) -> None:
    from flows.worker import interrupted  # the warm worker's flag: new labels are waiting

    if interrupted():
        raise Interrupted(message)
    log.info("Checking labels: %s", message)


@flow(name="flywheel-label-errors", log_prints=True, on_failure=[report_failure], persist_result=True)
def find_label_errors(params_path: str = "params.yaml", force: bool = False, trigger: str = "manual") -> dict[str, object]:
    """Flag the labels most likely wrong in the latest snapshot, in Label Studio's "Suspected label errors" tab."""
    ws = connect(params_path)
    summary: dict[str, object] = {"snapshot": None, "suspected": None, "written": 0}
    latest = ws.data.latest()  # unlocked: the k folds read the snapshot by its revision, new labels never wait
    if latest is None or latest.too_few or (labels_checked(ws, latest) and not force):
        log.info("Nothing to check: no trainable snapshot yet, or the latest one was checked already.")
        return summary
    try:
        table = check_labels(ws, latest, progress=_fold_done)
    except Interrupted:
        log.info("Checking labels paused for new labels: it runs again when the loop is idle.")
        return {**summary, "interrupted": True}
    summary.update(snapshot=latest.rev, suspected=int(table["suspected"].sum()))
    with one_at_a_time(ws, PUBLISH_LOCK):
        champion = ws.models.champion()
        if champion is not None:
            summary["written"] = write_back(ws, champion)
    log.info("Checked the labels of %s: %d suspected label error(s).", summary["snapshot"], summary["suspected"])
    return summary
