"""The loop's second stage: train -> register.

A model is trained on a versioned snapshot, read by its revision (from scratch, from the pretrained
backbone, or fine-tuned from the champion on the served loop's fast path), logged to MLflow with
what links it to its data, registered, and made the champion when it does better on the same
validation set. Training is skipped for a snapshot that already has a registered model, so a rerun
after a crash finishes the job without training twice.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from components.adapters.registry import Promotion, Recipe, RegisteredModel
from components.adapters.versioning import SnapshotVersion
from components.core.faults import owner, pause_point
from components.core.tags import (
    TAG_ARCHITECTURE,
    TAG_BACKBONE,
    TAG_BACKBONE_FROZEN,
    TAG_CURSOR,
    TAG_DATA_REGISTRY,
    TAG_DVC_COMMIT,
    TAG_DVC_REV,
    TAG_FINE_TUNED_FROM,
    TAG_KIND,
    KIND_TRAINING,
    TAG_LABEL_STUDIO_URL,
    TAG_MD5,
    TAG_OWNER,
    TAG_PROJECT,
    TAG_PROMOTED,
    TAG_REGISTERED,
    TAG_RUN_NAME,
    TAG_SCHEDULE,
    SCHEDULE_BACKGROUND,
    SCHEDULE_FINE_TUNE,
    SCHEDULE_SCRATCH,
)
from components.data.snapshot import read_manifest, training_rows
from components.learning.training import Backbone, TrainedModel, fit
from components.loop.pool import backbone_for, pretrained_run
from components.loop.workspace import Workspace, refreshing_now

log = logging.getLogger(__name__)


def ready_to_train(ws: Workspace, snapshot_version: SnapshotVersion) -> bool:
    """True when the snapshot has enough labels per class and no model was trained on it yet."""
    return not snapshot_version.too_few and trained_run(ws, snapshot_version) is None


def trained_run(ws: Workspace, snapshot_version: SnapshotVersion) -> str | None:
    """The run id of a registered model trained on this snapshot by the loop's architecture, if any."""
    runs = ws.models.runs_tagged(
        {TAG_MD5: snapshot_version.md5, TAG_ARCHITECTURE: ws.params.train.architecture}, registered=True
    )
    return runs[0].info.run_id if runs else None


def run_tags(ws: Workspace, snapshot_version: SnapshotVersion, architecture: str) -> dict[str, str]:
    """What links a model to its data: DVC hash and rev, registry, Label Studio project, cursor."""
    return {
        TAG_MD5: snapshot_version.md5,
        TAG_DVC_REV: snapshot_version.rev,
        TAG_DVC_COMMIT: snapshot_version.commit,
        TAG_DATA_REGISTRY: str(snapshot_version.registry),
        TAG_PROJECT: str(ws.project.id),
        TAG_LABEL_STUDIO_URL: ws.settings.label_studio_url,
        TAG_CURSOR: snapshot_version.cursor or "",
        TAG_ARCHITECTURE: architecture,
        TAG_RUN_NAME: f"{architecture}@{snapshot_version.rev}",
        TAG_OWNER: owner(),
    }


def log_snapshot_input(ws: Workspace, run_id: str, snapshot_version: SnapshotVersion, images: int, context: str) -> None:
    """Show the snapshot a run read in MLflow's Datasets column: `labels@<rev>`, DVC's hash, the data
    registry and rev it is read back from (`dvc get <registry> snapshot --rev <rev>`)."""
    ws.models.log_input(
        run_id, f"labels@{snapshot_version.rev}", snapshot_version.md5,
        {"registry": str(snapshot_version.registry), "rev": snapshot_version.rev, "commit": snapshot_version.commit},
        context, profile={"images": images, "project": ws.project.id},
    )


def champion_to_tune(ws: Workspace, architecture: str, backbone: Backbone | None = None) -> tuple[RegisteredModel, torch.nn.Module] | None:
    """The champion and its model when the fast path may fine-tune it into `architecture`: it is of
    that architecture, started from the current pretrained backbone (if any) which is no longer
    frozen for either (a head on a frozen backbone trains from scratch in seconds; at the switch the
    whole network trains afresh), knows the project's labels and input size, and
    `train.finetune_steps` is set."""
    champion = ws.models.champion() if ws.params.train.finetune_steps else None
    if champion is None or (backbone is not None and backbone.frozen):
        return None
    tags = ws.models.tags_of(champion.run_id)
    if tags.get(TAG_ARCHITECTURE, "") != architecture or tags.get(TAG_BACKBONE, "") != (backbone.run_id if backbone else ""):
        return None
    if tags.get(TAG_BACKBONE_FROZEN) == "true":
        return None
    model = ws.models.load(champion)
    same = list(getattr(model, "labels", [])) == list(ws.project.config.labels) and model.image_size == ws.params.train.image_size
    if not same:
        return None
    fresh = ws.task.module(architecture, ws.params.architectures.get(architecture, {}), ws.project.config.labels, 1.0, False)
    try:  # architecture options changed since (another width): the weights do not fit, train from scratch
        fresh.net.load_state_dict(model.net.state_dict())
    except RuntimeError as e:
        log.warning("Training from scratch: the champion's weights do not fit %s as params.yaml builds it now (%s).",
                    architecture, str(e).splitlines()[0])
        return None
    return champion, model


def schedule_of(tags: dict[str, str]) -> str:
    """How a run trained (`flywheel.schedule`); for runs logged before that tag, from `flywheel.fine_tuned_from`."""
    return tags.get(TAG_SCHEDULE) or (SCHEDULE_FINE_TUNE if TAG_FINE_TUNED_FROM in tags else SCHEDULE_SCRATCH)


def retrain_snapshot(ws: Workspace) -> SnapshotVersion | None:
    """The snapshot the background retrain should train the loop's model on from scratch, or None when none
    is due: with `retrain.growth` on, the snapshot of the loop's newest registered model (the fast path comes
    first), when it saw `growth` times the training images of the newest registered model from scratch (in
    the loop or in the background) of the project's last 100."""
    if not ws.params.retrain.growth:
        return None
    runs = ws.models.runs_tagged(
        {TAG_ARCHITECTURE: ws.params.train.architecture, TAG_PROJECT: str(ws.project.id)}, registered=True, max_results=100,
    )
    runs = sorted((r for r in runs if "train_images" in r.data.metrics), key=lambda r: r.info.start_time, reverse=True)
    loop = next((r for r in runs if schedule_of(r.data.tags) != SCHEDULE_BACKGROUND), None)
    full = next((r for r in runs if schedule_of(r.data.tags) != SCHEDULE_FINE_TUNE), None)
    if loop is None or not ws.params.retrain.due(int(loop.data.metrics["train_images"]),
                                                 int(full.data.metrics["train_images"]) if full is not None else None):
        return None
    return ws.data.at(loop.data.tags[TAG_DVC_REV])


def train(
    ws: Workspace, snapshot_version: SnapshotVersion, architecture: str, progress: bool = True, warm: bool = False,
    parallel: bool = False, background: bool = False,
) -> TrainedModel:
    """Train one architecture on the snapshot of `snapshot_version`, read by its revision: from
    scratch, or with `warm` (the served loop's fast path) by fine-tuning the champion's weights for
    `train.finetune_steps` steps when the champion is of this architecture. With `parallel` (the
    scheduled full retrain), on `compute.devices` processes or GPUs (DDP) when params.yaml says so. With
    `background` (the background retrain), from scratch for `retrain.steps`, waiting between batches while
    an iteration refreshes pre-annotations."""
    p = ws.params.train
    folder = ws.data.checkout(snapshot_version)
    rows = training_rows(read_manifest(folder))
    pretrained = pretrained_run(ws, architecture)
    backbone = backbone_for(ws, architecture, len(rows), pretrained) if pretrained is not None else None
    start = champion_to_tune(ws, architecture, backbone) if warm and not background else None
    steps = ws.params.retrain.steps if background else None
    schedule = (
        dict(min_steps=0, max_steps=p.finetune_steps, lr=p.finetune_lr) if start
        else dict(min_steps=steps or p.min_steps, max_steps=steps or p.max_steps, lr=p.lr)
    )
    tags = {
        **run_tags(ws, snapshot_version, architecture), TAG_KIND: KIND_TRAINING,
        TAG_SCHEDULE: SCHEDULE_FINE_TUNE if start else SCHEDULE_BACKGROUND if background else SCHEDULE_SCRATCH,
    }
    if start:
        tags[TAG_FINE_TUNED_FROM] = start[0].model_version
    if backbone is not None:
        tags.update({TAG_BACKBONE: backbone.run_id, TAG_BACKBONE_FROZEN: str(backbone.frozen).lower()})
    ws.models.ensure_experiment()  # made here, not by Lightning's logger (which would say so on the terminal)
    with ws.models.calling(f"track the training of {architecture}"):
        trained = fit(
            ws.task,
            folder,
            rows,
            ws.project.config.labels,
            architecture,
            ws.params.architectures.get(architecture, {}),
            image_size=p.image_size,
            batch_size=p.batch_size,
            max_epochs=p.max_epochs,
            patience=p.patience,
            augment=p.augment,
            copy_paste=p.copy_paste,
            seed=p.seed,
            tracking_uri=ws.settings.mlflow_tracking_uri,
            experiment=ws.params.registry.experiment,
            run_tags=tags,
            progress=progress,
            start_from=start[1] if start else None,
            backbone=backbone,
            compute=ws.compute,
            wait_while=(lambda: refreshing_now(ws)) if background else None,
            **(dict(devices=ws.compute.devices, strategy=ws.params.retrain.strategy) if parallel else {}),
            **schedule,
        )
    log_snapshot_input(ws, trained.run_id, snapshot_version, len(rows), "training")
    return trained


def choose_operating_point(ws: Workspace, trained: TrainedModel) -> float | None:
    """For boxes and masks: the score from which the model's objects are suggested that costs a person the
    fewest seconds on the validation set (params.yaml `strategy.seconds_per_action`), set on the model and
    logged with its run (`shown_from`, `val_effort_saved`). None for classification, or with no validation images."""
    if ws.task.drawn_as is None:
        return None
    chosen = ws.task.operating_point(trained.model, trained.val_set, list(trained.model.labels),
                                     ws.params.strategy.effort_costs(ws.task.drawn_as))
    if chosen is None:
        return None
    point, saved = chosen
    trained.model.shown_from = point
    ws.models.log_metrics(trained.run_id, {"shown_from": point, **({"val_effort_saved": saved} if saved is not None else {})})
    return point


def register(ws: Workspace, trained: TrainedModel) -> Promotion:
    """Log and register the model, with the score its objects are suggested from (boxes, masks: the one that
    saves most seconds on the validation set); move `champion` if it does better on the same val set."""
    shown_from = choose_operating_point(ws, trained)
    recipe = Recipe(
        task=ws.task.name,
        architecture=trained.architecture,
        options=dict(ws.params.architectures.get(trained.architecture, {})),
        labels=list(trained.model.labels),
        image_size=int(trained.model.image_size),
        shown_from=shown_from,
    )
    registered = ws.models.register(trained.model, trained.run_id, recipe)
    pause_point("register")  # registered, the champion not judged yet
    ws.models.set_tags(trained.run_id, {TAG_REGISTERED: str(registered.version)})
    labels = list(ws.project.config.labels)

    def judge(champion: Any) -> Any:
        same_task = type(champion) is type(trained.model) and list(champion.labels) == labels
        return ws.task.evaluate(champion, trained.val_set, labels) if same_task else None

    promotion = ws.models.promote_if_better(registered, trained.scores, judge, ws.task.metric)
    ws.models.set_tags(trained.run_id, {TAG_PROMOTED: str(promotion.promoted).lower()})
    return promotion
