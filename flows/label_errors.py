"""The label error check: k-fold out-of-fold probabilities + cleanlab over the latest snapshot, written back."""

from __future__ import annotations

import logging

from prefect import flow

from flows import tasks
from flows.common import PUBLISH_LOCK, connect, one_at_a_time, report_failure
from flows.runtime import interrupted

log = logging.getLogger("flows.label_errors")  # by name: Prefect loads a served flow's file under another module name


class Interrupted(Exception):
    """New labels arrived while the check ran in the warm worker: it stops between folds, to run again when idle."""


def _fold_done(message: str) -> None:
    if interrupted():  # the warm worker's flag: new labels are waiting
        raise Interrupted(message)
    log.info("Checking labels: %s", message)


@flow(name="flywheel-label-errors", log_prints=True, on_failure=[report_failure], persist_result=True)
def find_label_errors(params_path: str = "params.yaml", force: bool = False, trigger: str = "manual") -> dict[str, object]:
    """Flag the labels most likely wrong in the latest snapshot, in Label Studio's "Suspected label errors" tab."""
    ws = connect(params_path)
    summary: dict[str, object] = {"snapshot": None, "suspected": None, "written": 0}
    latest = ws.data.latest()  # unlocked: the k folds read the snapshot by its revision, new labels never wait
    if latest is None or latest.too_few or (tasks.labels_checked(ws, latest) and not force):
        log.info("Nothing to check: no trainable snapshot yet, or the latest one was checked already.")
        return summary
    try:
        table = tasks.check_labels(ws, latest, progress=_fold_done)
    except Interrupted:
        log.info("Checking labels paused for new labels: it runs again when the loop is idle.")
        return {**summary, "interrupted": True}
    summary.update(snapshot=latest.rev, suspected=int(table["suspected"].sum()))
    with one_at_a_time(ws, PUBLISH_LOCK):
        champion = ws.models.champion()
        if champion is not None:
            summary["written"] = tasks.write_back(ws, champion, ws.data.latest())  # not `latest`: a label corrected meanwhile is no suspect
    log.info("Checked the labels of %s: %d suspected label error(s).", summary["snapshot"], summary["suspected"])
    return summary
