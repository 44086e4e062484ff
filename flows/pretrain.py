"""Self-supervised pretraining of the loop's backbone on every image of the project: pool -> version (DVC) -> pretrain (MLflow)."""

from __future__ import annotations

import logging

from prefect import flow

from flows import tasks
from flows.common import connect, one_at_a_time, report_failure

log = logging.getLogger("flows.pretrain")


@flow(name="flywheel-pretrain", log_prints=True, on_failure=[report_failure])
def pretrain(params_path: str = "params.yaml", force: bool = False, progress: bool = True, trigger: str = "manual") -> dict[str, object]:
    """Pretrain the loop architecture's backbone on the project's image pool when it grew (or `force`);
    before the first model, "Label next" then comes from it."""
    ws = connect(params_path)
    if not ws.params.pretrain.enabled or not (force or tasks.pretraining_due(ws)):  # the task count stands in for the pool: one request
        return {"pretrained": False, "pool_images": None}
    images = tasks.image_pool(ws)
    if not force and not tasks.pretraining_due(ws, len(images)):  # tasks whose image cannot be read are not in the pool
        return {"pretrained": False, "pool_images": len(images)}
    with one_at_a_time(ws):  # the pool is committed to the registry the snapshots are committed to
        rev = tasks.version_pool(ws, images)
    log.info("Pretraining the backbone on %d images (%s), self-supervised...", len(images), rev)
    pretrained = tasks.pretrain_backbone(ws, images, rev, progress)
    log.info("Pretrained the backbone on %d images in %.0f s (MLflow run %s).", len(images), pretrained.seconds, pretrained.run_id)
    # before the first model, "Label next" from this backbone; not under the lock: it embeds every image
    cold = tasks.publish_cold_start(ws, ws.data.latest(), pretrained) if ws.models.champion() is None else []
    return {"pretrained": True, "pool_images": len(images), "pool_rev": rev, "run_id": pretrained.run_id,
            "seconds": round(pretrained.seconds, 1), "label_next": len(cold)}


if __name__ == "__main__":  # `flywheel serve`'s background pretraining (flows.serve.Pretrainer)
    import signal
    import sys

    import torch

    from components.core.params import load_params
    from flows import logs

    logs.setup()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for `flywheel serve`, which stops this process
    torch.set_num_threads(load_params(sys.argv[1]).pretrain.threads)
    pretrain(sys.argv[1], progress=False, trigger="background")
