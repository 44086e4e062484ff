"""The scheduled full retrain: every architecture in params.yaml on the latest snapshot, best to champion."""

from __future__ import annotations

import logging

from prefect import flow

from flows.common import PUBLISH_LOCK, connect, one_at_a_time, report_failure
from flows import tasks

log = logging.getLogger("flows.retrain")  # by name: Prefect loads a served flow's file under another module name


@flow(name="flywheel-retrain", log_prints=True, on_failure=[report_failure], persist_result=True)
def retrain(params_path: str = "params.yaml") -> dict[str, object]:
    """Compare every architecture on the latest snapshot in one MLflow experiment; refresh pre-annotations."""
    ws = connect(params_path)
    summary: dict[str, object] = {"snapshot": None, "score": {}, "written": 0}
    latest = ws.data.latest()  # unlocked: training reads the snapshot by its revision
    if latest is None or latest.too_few:
        log.info("No trainable snapshot yet: label some tasks of every class and let the loop run first.")
        return summary
    summary["snapshot"] = latest.rev
    for architecture in (a for a in ws.params.architectures if ws.task.builds(a)):
        trained = tasks.train(ws, latest, architecture, parallel=True)  # DDP when compute.devices > 1
        with one_at_a_time(ws, PUBLISH_LOCK):
            summary["score"][architecture] = tasks.register(ws, trained).candidate_score  # type: ignore[index]
    with one_at_a_time(ws, PUBLISH_LOCK):
        summary["champion"], summary["written"] = tasks.refresh_preannotations(ws, ws.models.champion(), ws.data.latest())
        if summary["written"]:
            tasks.tidy(ws)
    scores = ", ".join(f"{a} {v:.3f}" for a, v in summary["score"].items())  # type: ignore[union-attr]
    log.info("Retrained on %s: %s %s; champion %s.", summary["snapshot"], ws.task.metric_title, scores, summary["champion"])
    return summary
