"""Full retrains from scratch: the scheduled one (every architecture in params.yaml on the latest snapshot, best
to champion), and the background one (the loop's architecture, each time the labeled set grew by `retrain.growth`)."""

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


@flow(name="flywheel-background-retrain", log_prints=True, on_failure=[report_failure], persist_result=True)
def background_retrain(params_path: str = "params.yaml", progress: bool = False, trigger: str = "background") -> dict[str, object]:
    """Train the loop's model from scratch when it is due (`tasks.retrain_snapshot`): the fast path's chain of
    short fine-tunes does not reach what a full training on the same labels does. Registered and judged as any
    model; a new champion's pre-annotations are written by the next iteration (`flywheel serve` starts one when
    this ends), at the loop's priority, not this process's."""
    ws = connect(params_path)
    snapshot = tasks.retrain_snapshot(ws)
    if snapshot is None:
        return {"retrained": False}
    log.info("Retraining %s from scratch on %s in the background...", ws.params.train.architecture, snapshot.rev)
    trained = tasks.train(ws, snapshot, ws.params.train.architecture, progress, background=True)
    with one_at_a_time(ws, PUBLISH_LOCK):
        promotion = tasks.register(ws, trained)
    verdict = "now the champion" if promotion.promoted else "the champion stays"
    log.info("Retrained from scratch on %s (%d training images): %s %.3f, %s.", snapshot.rev,
             int(trained.metrics["train_images"]), ws.task.metric_title, promotion.candidate_score, verdict)
    return {"retrained": True, "snapshot": snapshot.rev, "promoted": promotion.promoted, "score": promotion.candidate_score}


if __name__ == "__main__":  # `flywheel serve`'s background retrain (flows.serve.background.Retrainer)
    import signal
    import sys

    import torch

    from components.core.params import load_params
    from flows import logs

    logs.setup()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for `flywheel serve`, which stops this process
    torch.set_num_threads(load_params(sys.argv[1]).retrain.threads)
    background_retrain(sys.argv[1])
