"""Self-supervised pretraining of the loop's backbone on every image of the project: pool -> version (DVC) -> pretrain (MLflow)."""

from __future__ import annotations

import logging

from prefect import flow

from components.loop import iteration
from flows.common import connect, io_task, one_at_a_time, report_failure, step

image_pool = io_task(iteration.image_pool)
pretraining_due = io_task(iteration.pretraining_due)
version_pool = io_task(iteration.version_pool)
pretrain_backbone = step(iteration.pretrain_backbone)
publish_cold_start = io_task(iteration.publish_cold_start)
log = logging.getLogger("flows.pretrain")


@flow(name="flywheel-pretrain", log_prints=True, on_failure=[report_failure])
def pretrain(params_path: str = "params.yaml", force: bool = False, progress: bool = True, trigger: str = "manual") -> dict[str, object]:
    """Pretrain the loop architecture's backbone on the project's image pool when it grew (or `force`);
    before the first model, "Label next" then comes from it."""
    ws = connect(params_path)
    if not ws.params.pretrain.enabled or not (force or pretraining_due(ws)):  # the task count stands in for the pool: one request
        return {"pretrained": False, "pool_images": None}
    pool = image_pool(ws)
    if not force and not pretraining_due(ws, len(pool)):  # tasks whose image cannot be read are not in the pool
        return {"pretrained": False, "pool_images": len(pool)}
    with one_at_a_time(ws):  # the pool is committed to the registry the snapshots are committed to
        rev = version_pool(ws, pool)
    log.info("Pretraining the backbone on %d images (%s), self-supervised...", len(pool), rev)
    pretrained = pretrain_backbone(ws, pool, rev, progress)
    log.info("Pretrained the backbone on %d images in %.0f s (MLflow run %s).", len(pool), pretrained.seconds, pretrained.run_id)
    cold = publish_cold_start(ws) if ws.models.champion() is None else []  # not under the lock: it embeds every image
    return {"pretrained": True, "pool_images": len(pool), "pool_rev": rev, "run_id": pretrained.run_id,
            "seconds": round(pretrained.seconds, 1), "label_next": len(cold)}


if __name__ == "__main__":  # `flywheel serve`'s background pretraining (flows.serve.Pretrainer)
    import signal
    import sys

    import torch

    from components.core.params import load_params

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for `flywheel serve`, which stops this process
    torch.set_num_threads(load_params(sys.argv[1]).pretrain.threads)
    pretrain(sys.argv[1], progress=False, trigger="background")
