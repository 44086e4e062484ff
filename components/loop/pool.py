"""Learning from every image of the project, labeled or not: the image pool is versioned, the loop
architecture's backbone is pretrained on it (self-supervised, on its own schedule), and the loop's
models start from that backbone. Before they can be trusted, "Label next" picks typical images of
the clusters nobody labeled yet (`cold_start`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from components.core.tags import (
    KIND_PRETRAINING,
    TAG_ARCHITECTURE,
    TAG_ARCHITECTURE_OPTIONS,
    TAG_DATA_REGISTRY,
    TAG_IMAGE_SIZE,
    TAG_KIND,
    TAG_POOL_PROJECT,
    TAG_POOL_REV,
    TAG_POOL_SIZE,
    TAG_RUN_NAME,
)
from components.data.images import StoredImage
from components.learning.pretraining import BACKBONE_FILE, Pretrained, pretrain, refresh_due, sample
from components.learning.training import Backbone
from components.loop.ingest import resolve_image
from components.loop.workspace import Workspace, refreshing_now
from components.networks.backbones import backbone_of, load_backbone
from components.networks.preprocessing import load_images

log = logging.getLogger(__name__)


def pool_tags(ws: Workspace, architecture: str) -> dict[str, str]:
    """What identifies a project's pretrained backbone: the project, the architecture and input size.
    (Not the loop's project tag: a backbone pretrained in the background is RUNNING while the loop
    closes abandoned runs.)"""
    options = json.dumps(ws.params.architectures.get(architecture, {}), sort_keys=True)
    return {TAG_POOL_PROJECT: str(ws.project.id), TAG_ARCHITECTURE: architecture,
            TAG_IMAGE_SIZE: str(ws.params.train.image_size), TAG_ARCHITECTURE_OPTIONS: options}


def pretrained_run(ws: Workspace, architecture: str) -> Any:
    """The newest pretraining run of the project's backbone for `architecture` (None when there is
    none, or pretraining is off)."""
    return ws.models.latest_pretraining(pool_tags(ws, architecture)) if ws.params.pretrain.enabled else None


def backbone_for(ws: Workspace, architecture: str, labeled: int, run: Any = None) -> Backbone | None:
    """The pretrained backbone a model of `architecture` starts from, frozen while fewer than
    `train.freeze_backbone_below` images are labeled (None when there is none). `run`: the
    pretraining run when the caller found it already; else the newest one is looked up."""
    run = run if run is not None else pretrained_run(ws, architecture)
    if run is None:
        return None
    state = ws.models.artifact_tensors(run.info.run_id, BACKBONE_FILE)
    return fitting_backbone(ws, architecture, labeled, run.info.run_id, state)


def fitting_backbone(
    ws: Workspace, architecture: str, labeled: int, run_id: str, state: dict[str, torch.Tensor]
) -> Backbone | None:
    """The backbone weights `state` pretrained by run `run_id` as `backbone_for` hands them out, or
    None when they do not fit `architecture` as params.yaml builds it now."""
    p = ws.params.train
    net = ws.task.module(architecture, ws.params.architectures.get(architecture, {}), ws.project.config.labels, 1.0, False).net
    if not load_backbone(net, state):
        log.warning("Not starting from the pretrained backbone of run %s: it does not fit %s as params.yaml builds it now.",
                    run_id, architecture)
        return None
    return Backbone(state, run_id, frozen=labeled < p.freeze_backbone_below, lr_scale=p.backbone_lr_scale)


def image_pool(ws: Workspace) -> dict[str, Path]:
    """Every readable image of the project, labeled or not: content hash -> file (fetched once, cached)."""
    pool = {}
    for task_id, data in ws.label_studio.all_tasks(ws.project.id).items():
        image = resolve_image(ws, task_id, data)
        if isinstance(image, StoredImage):
            pool[image.sha256] = image.path
    return pool


def pretraining_due(ws: Workspace, pool_images: int | None = None) -> bool:
    """Whether the backbone should be pretrained (again): pretraining is on, the architecture has a
    backbone, and there is none yet or the pool grew by `pretrain.refresh_growth` since. Without
    `pool_images`, the project's task count stands in for it (one request)."""
    p, architecture = ws.params.pretrain, ws.params.train.architecture
    if not p.enabled or backbone_of(ws.task.module(architecture, ws.params.architectures.get(architecture, {}),
                                                   ws.project.config.labels, 1.0, False).net) is None:
        return False
    run = pretrained_run(ws, architecture)
    seen = int(run.data.tags[TAG_POOL_SIZE]) if run is not None else None
    count = pool_images if pool_images is not None else ws.label_studio.task_count(ws.project.id)
    return refresh_due(count, seen, p.refresh_growth)


def version_pool(ws: Workspace, pool: Mapping[str, Path]) -> str:
    """Version the image pool in the project's data registry (call holding the loop's lock). Returns its rev."""
    return ws.data.commit_pool(dict(pool), ws.project.id)


def pretrain_backbone(ws: Workspace, pool: Mapping[str, Path], pool_rev: str, progress: bool = True) -> Pretrained:
    """Pretrain the loop architecture's backbone on the pool (a seeded draw of `pretrain.max_images`
    when larger) with SimCLR, logged to MLflow as its own run tied to the pool's DVC revision; it waits
    between its batches while the project's pre-annotations are being refreshed (`refreshing`)."""
    p, t = ws.params.pretrain, ws.params.train
    shas = sorted(pool)
    chosen = [pool[shas[i]] for i in sample(len(shas), p.max_images, t.seed)]
    tags = {
        **pool_tags(ws, t.architecture), TAG_KIND: KIND_PRETRAINING, TAG_POOL_SIZE: str(len(pool)), TAG_POOL_REV: pool_rev,
        TAG_DATA_REGISTRY: str(ws.data.root), TAG_RUN_NAME: f"pretrain-{t.architecture}@{pool_rev}",
    }
    ws.models.ensure_experiment()  # made here, not by Lightning's logger (which would say so on the terminal)
    with ws.models.calling(f"track the pretraining of {t.architecture}"):
        return pretrain(
            load_images(chosen, t.image_size), t.architecture, ws.params.architectures.get(t.architecture, {}),
            len(ws.project.config.labels), epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, temperature=p.temperature,
            flip=p.flip, seed=t.seed, tracking_uri=ws.settings.mlflow_tracking_uri, experiment=ws.params.registry.experiment,
            run_tags=tags, progress=progress, wait_while=lambda: refreshing_now(ws), compute=ws.compute,
        )


def cold_start(ws: Workspace, labeled: int) -> bool:
    """Whether "Label next" should pick typical images of unlabeled clusters rather than uncertain ones:
    the model starts from a pretrained backbone (whose embeddings mean something before any label)
    and fewer than `select.cold_start_below` images are labeled (`labeled`: the latest snapshot's
    count), so the model is not trusted yet."""
    return labeled < ws.params.select.cold_start_below and pretrained_run(ws, ws.params.train.architecture) is not None
