"""The steps of one flywheel iteration, as plain functions over a `Workspace` (no Prefect here).

The flows in `flows/` wire these in order; a notebook or a test can call them directly:

    poll -> snapshot (aside) -> validate -> version -> train -> register -> predict + rank -> write back -> report

and, on its own schedule, `check_labels` (k-fold error finding) followed by another write back.

Every step is safe to repeat: the cursor lives in the snapshot's registry commit, training is
skipped for a snapshot that already has a registered model, and write-back replaces its model
version. So a rerun after a crash at any point finishes the job without duplicating anything.
A task whose annotation or image is unusable is left out and listed in the "Needs attention" tab;
it never stops the rest. Every step after `version` reads the snapshot by its revision.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from components.data.conversions import Prediction, current_annotation, task_from_json
from components.core.errors import AnnotationError, DataError, LabelStudioError, SettingsError
from components.core.faults import dead_pid_in, owned_name, owner, pause_point
from components.data.images import ImageError, ImageStore, StoredImage, shown_size
from components.learning.label_errors import find_label_errors
from components.adapters.label_studio import (
    BY_ID,
    OVERLAP_S,
    LEAST_CONFIDENT_FIRST,
    MOST_CONFIDENT_FIRST,
    ChangeSet,
    LabelStudio,
    Project,
)
from components.core.labeling_config import load_labeling_config
from components.core.params import Params
from components.learning.prediction import embed, infer_images
from components.adapters.registry import TAG_KIND, TAG_OWNER, TAG_PROJECT, TAG_REGISTERED, ModelRegistry, Promotion, Recipe, RegisteredModel
from components.studies.report import LearningPoint, Report, build_report, measure_acceptance, production_view, read_out_of_fold, write_report
from components.production.serving import read_stats
from components.learning.pretraining import (
    BACKBONE_FILE,
    TAG_BACKBONE,
    TAG_POOL_PROJECT,
    TAG_POOL_REV,
    TAG_POOL_SIZE,
    Pretrained,
    backbone_of,
    embed_with,
    load_backbone,
    pretrain,
    refresh_due,
    sample,
)
from components.learning.selection import rank_for_labeling, rank_typical
from components.studies.strategy import Labeled, costs_of
from components.core.settings import Settings
from components.data.snapshot import (
    apply_changes,
    due_for_retry,
    duplicates,
    read_manifest,
    real_changes,
    training_rows,
    write_snapshot,
)
from components.tasks import TaskType, task_type_of
from components.learning.training import Backbone, TrainedModel, fit, load_images, to_tensor
from components.data.validation import ValidationReport, validate_snapshot
from components.adapters.versioning import DataRegistry, SnapshotVersion

log = logging.getLogger(__name__)

TAG_MD5 = "flywheel.dvc_md5"
LABEL_NEXT_VIEW = "Label next"
SUSPECTS_VIEW = "Suspected label errors"
ATTENTION_VIEW = "Needs attention"
SUSPECT_MARK = "flywheel-label-error"  # the result id of a suspect's prediction
ATTENTION_FILE = "needs_attention.json"


@dataclass(frozen=True)
class Workspace:
    """Everything one iteration talks to, built once from settings and params."""

    settings: Settings
    params: Params
    label_studio: LabelStudio
    project: Project
    data: DataRegistry
    models: ModelRegistry
    images: ImageStore

    @property
    def task(self) -> TaskType:
        """The project's task type, from its labeling config's control tag."""
        return task_type_of(self.project.config)


def open_workspace(
    settings: Settings, params: Params, project_root: Path = Path("."), create_project: bool = False
) -> Workspace:
    """Connect to Label Studio, find the project (create it only when asked), open its data registry.

    Raises:
        LabelStudioError: Label Studio is unreachable or refuses the token, or the project does not
            exist (the loop never creates one silently: `flywheel import` and `flywheel demo` do).
        LabelConfigError: The project's labeling config does not match params.yaml's.
    """
    settings.ensure_workspace()
    settings.apply_client_env()
    label_studio = LabelStudio.from_settings(settings)
    config = load_labeling_config(project_root / params.project.config)
    project = label_studio.ensure_project(params.project.title, config, create=create_project)
    if project is None:
        raise LabelStudioError(
            f"Label Studio at {settings.label_studio_url} has no project {params.project.title!r}. Create it with "
            "`flywheel import FOLDER` (or `flywheel demo`), or set project.title in params.yaml. A project "
            f"deleted in Label Studio is gone there; its versioned snapshots stay under {settings.workspace / 'registry'}."
        )
    data = DataRegistry(
        settings.workspace / "registry" / f"project-{project.id}", settings.dvc_remote, endpoint_url=settings.s3_endpoint_url
    ).open()
    i = params.images
    return Workspace(
        settings=settings,
        params=params,
        label_studio=label_studio,
        project=project,
        data=data,
        models=ModelRegistry(settings.mlflow_tracking_uri, params.registry.model_name, params.registry.experiment),
        images=ImageStore(
            settings.workspace / "cache" / "images", settings.image_root, label_studio,
            fetch_timeout_s=i.fetch_timeout_s, max_bytes=i.max_bytes, max_pixels=i.max_pixels,
            retry_failed_s=i.retry_failed_s,
        ),
    )


class WorkspaceCache:
    """One process's workspace, kept from one run to the next (the warm worker's): opening one reaches
    Label Studio, MLflow and the data registry, seconds that a run started by a new label should not
    pay each time.

    `open` builds it with `open_workspace` the first time, and again whenever the settings, the params
    or the labeling config file read differently from those that built it; `forget` drops it, so the
    run after a failure connects afresh (a server restarted, a project recreated, a token changed).

    Args:
        opener: How a workspace is built (`open_workspace`).
    """

    def __init__(self, opener: Callable[[Settings, Params, Path], Workspace] = open_workspace):
        self._opener = opener
        self._built: tuple[tuple[Any, ...], Workspace] | None = None

    def open(self, settings: Settings, params: Params, project_root: Path = Path(".")) -> Workspace:
        """The kept workspace when `settings`, `params` and the labeling config they name are those it
        was built from; otherwise a new one, kept instead.

        Raises:
            As `open_workspace`.
        """
        key = (settings, params, Path(project_root).resolve(), load_labeling_config(project_root / params.project.config))
        if self._built is not None and self._built[0] == key:
            settings.ensure_workspace()
            settings.apply_client_env()
            return self._built[1]
        self._built = None
        workspace = self._opener(settings, params, project_root)
        self._built = (key, workspace)
        return workspace

    def forget(self) -> None:
        """Drop the kept workspace: the next `open` connects afresh."""
        self._built = None


def reports_dir(ws: Workspace) -> Path:
    """Where the project's label-error table, needs-attention list and strategy report live."""
    return ws.settings.workspace / "reports" / f"project-{ws.project.id}"


def latest_snapshot(ws: Workspace) -> tuple[SnapshotVersion | None, Path | None]:
    """The last versioned snapshot and its folder, read by revision (None, None before the first)."""
    latest = ws.data.latest()
    return (latest, ws.data.checkout(latest)) if latest else (None, None)


def poll(ws: Workspace) -> ChangeSet:
    """Annotations changed since the cursor of the last versioned snapshot (really changed: a task
    touched only by a prediction edit is not counted), and the tasks left out for an image fetch
    that may work now (`images.retry_failed_s` passed)."""
    latest, folder = latest_snapshot(ws)
    changes = ws.label_studio.fetch_changed(ws.project.id, latest.cursor if latest else None, overlap_s=OVERLAP_S)
    pause_point("poll")
    quarantine = latest.quarantine if latest else {}
    changed = real_changes(read_manifest(folder), quarantine, changes.tasks, ws.project.config.data_key)
    seen = {t.id for t in changed}
    retried = [ws.label_studio.labeled_task(t) for t in due_for_retry(quarantine) if t not in seen]
    return ChangeSet((*changed, *retried), changes.cursor)


@dataclass(frozen=True)
class StagedSnapshot:
    """A snapshot built aside, not versioned yet."""

    folder: Path
    manifest: pd.DataFrame
    quarantine: dict[int, dict[str, Any]]
    duplicates: dict[int, str]


def resolve_image(ws: Workspace, task_id: int, data: Mapping[str, Any]) -> StoredImage | ImageError:
    """A task's image fetched and decoded once as the model will see it, or why it cannot be."""
    try:
        image = ws.images.resolve(task_id, data, ws.project.config.data_key)
        ws.images.check(task_id, image, ws.params.train.image_size)
        return image
    except ImageError as e:
        return e


def decode_unlabeled(
    ws: Workspace, tasks: Mapping[int, Mapping[str, Any]], image_size: int
) -> tuple[dict[int, np.ndarray], dict[int, str], dict[int, tuple[int, int]]]:
    """Every unlabeled task's image decoded for the model, task id -> why an image could not be, and
    task id -> the image's own (width, height) as shown."""
    decoded, problems, sizes = {}, {}, {}
    for task_id, data in tasks.items():
        try:
            image = ws.images.resolve(task_id, data, ws.project.config.data_key)
            decoded[task_id] = ws.images.check(task_id, image, image_size)
            sizes[task_id] = shown_size(image.path)
        except ImageError as e:
            problems[task_id] = str(e)
    return decoded, problems, sizes


def snapshot(ws: Workspace, changes: ChangeSet, folder: Path) -> StagedSnapshot:
    """Apply the changes to the last snapshot and write the next one into `folder` (a staging folder).

    A changed task whose annotation or image cannot be used is left out and quarantined with the
    reason; the rest goes on.
    """
    latest, previous_folder = latest_snapshot(ws)
    images = {
        task.id: resolve_image(ws, task.id, task.data) for task in changes.tasks if current_annotation(task) is not None
    }
    update = apply_changes(
        read_manifest(previous_folder),
        latest.quarantine if latest else {},
        changes.tasks,
        ws.project.config,
        ws.params.snapshot.val_percent,
        images,
        ws.task,
        retry_after_s=ws.params.images.retry_failed_s,
    )
    sources = {image.sha256: image.path for image in images.values() if isinstance(image, StoredImage)}
    write_snapshot(update.manifest, sources, folder, previous_folder)
    return StagedSnapshot(folder, update.manifest, update.quarantine, duplicates(update.manifest))


def validate(ws: Workspace, staged: StagedSnapshot) -> ValidationReport:
    """Gate the staged snapshot on the data contract.

    Returns:
        The report; `too_few` names the classes below `validate.min_per_class` (the snapshot is
        versioned, training waits for more labels).

    Raises:
        DataError: The contract is broken (a bug, since bad input is quarantined before); nothing is
            versioned and the cursor does not move.
    """
    report = validate_snapshot(
        staged.manifest, staged.folder, ws.project.config.labels, ws.params.validate_.min_per_class, ws.task
    )
    if not report.success and not report.only_too_few:
        raise DataError(f"Not versioning: {report.describe()}", list(report.task_ids))
    if report.too_few:
        log.warning("Waiting for labels before training: %s", "; ".join(f for f in report.failures))
    return report


def version(ws: Workspace, staged: StagedSnapshot, changes: ChangeSet, report: ValidationReport) -> SnapshotVersion:
    """Version the staged snapshot with DVC, push it, and advance the cursor in the same commit."""
    return ws.data.commit(
        staged.folder, ws.project.id, changes.cursor, ws.project.title,
        quarantine=staged.quarantine, duplicates=staged.duplicates, too_few=list(report.too_few),
    )


def ready_to_train(ws: Workspace, snapshot_version: SnapshotVersion) -> bool:
    """True when the snapshot has enough labels per class and no model was trained on it yet."""
    return not snapshot_version.too_few and trained_run(ws, snapshot_version) is None


def trained_run(ws: Workspace, snapshot_version: SnapshotVersion) -> str | None:
    """The run id of a registered model trained on this snapshot by the loop's architecture, if any."""
    runs = ws.models.runs_tagged(
        {TAG_MD5: snapshot_version.md5, "flywheel.architecture": ws.params.train.architecture}, registered=True
    )
    return runs[0].info.run_id if runs else None


def run_tags(ws: Workspace, snapshot_version: SnapshotVersion, architecture: str) -> dict[str, str]:
    """What links a model to its data: DVC hash and rev, registry, Label Studio project, cursor."""
    return {
        TAG_MD5: snapshot_version.md5,
        "flywheel.dvc_rev": snapshot_version.rev,
        "flywheel.dvc_commit": snapshot_version.commit,
        "flywheel.data_registry": str(snapshot_version.registry),
        TAG_PROJECT: str(ws.project.id),
        "flywheel.label_studio_url": ws.settings.label_studio_url,
        "flywheel.cursor": snapshot_version.cursor or "",
        "flywheel.architecture": architecture,
        "mlflow.runName": f"{architecture}@{snapshot_version.rev}",
        TAG_OWNER: owner(),
    }


def close_abandoned(ws: Workspace, closed_by: str) -> list[str]:
    """Clear what a killed loop run left behind (call while holding the loop lock): its MLflow runs,
    still RUNNING, are marked FAILED; its half-built snapshot folders are removed."""
    closed = ws.models.close_abandoned_runs(ws.project.id, closed_by)
    if closed:
        log.warning("Closed %d MLflow run(s) left running by a killed run as FAILED: %s", len(closed), ", ".join(closed))
    ws.data.sweep()
    return closed


# --- self-supervised pretraining on every image of the project ----------------------------------------


def pool_tags(ws: Workspace, architecture: str) -> dict[str, str]:
    """What identifies a project's pretrained backbone: the project, the architecture and input size.
    (Not the loop's project tag: a backbone pretrained in the background is RUNNING while the loop
    closes abandoned runs.)"""
    options = json.dumps(ws.params.architectures.get(architecture, {}), sort_keys=True)
    return {TAG_POOL_PROJECT: str(ws.project.id), "flywheel.architecture": architecture,
            "flywheel.image_size": str(ws.params.train.image_size), "flywheel.architecture_options": options}


def pretrained_run(ws: Workspace, architecture: str) -> Any:
    """The newest pretraining run of the project's backbone for `architecture` (None when there is
    none, or pretraining is off)."""
    return ws.models.latest_pretraining(pool_tags(ws, architecture)) if ws.params.pretrain.enabled else None


def backbone_for(ws: Workspace, architecture: str, labeled: int, run: Any = None) -> Backbone | None:
    """The pretrained backbone a model of `architecture` starts from, frozen while fewer than
    `train.freeze_backbone_below` images are labeled (None when there is none)."""
    run = run if run is not None else pretrained_run(ws, architecture)
    if run is None:
        return None
    p = ws.params.train
    state = ws.models.artifact_tensors(run.info.run_id, BACKBONE_FILE)
    net = ws.task.module(architecture, ws.params.architectures.get(architecture, {}), ws.project.config.labels, 1.0, False).net
    if not load_backbone(net, state):
        log.warning("Not starting from the pretrained backbone of run %s: it does not fit %s as params.yaml builds it now.",
                    run.info.run_id, architecture)
        return None
    return Backbone(state, run.info.run_id, frozen=labeled < p.freeze_backbone_below, lr_scale=p.backbone_lr_scale)


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
        **pool_tags(ws, t.architecture), TAG_KIND: "pretraining", TAG_POOL_SIZE: str(len(pool)), TAG_POOL_REV: pool_rev,
        "flywheel.data_registry": str(ws.data.root), "mlflow.runName": f"pretrain-{t.architecture}@{pool_rev}",
    }
    with ws.models.calling(f"track the pretraining of {t.architecture}"):
        return pretrain(
            load_images(chosen, t.image_size), t.architecture, ws.params.architectures.get(t.architecture, {}),
            len(ws.project.config.labels), epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, temperature=p.temperature,
            flip=p.flip, seed=t.seed, tracking_uri=ws.settings.mlflow_tracking_uri, experiment=ws.params.registry.experiment,
            run_tags=tags, progress=progress, wait_while=lambda: refreshing_now(ws),
        )


def _refreshing_marks(ws: Workspace) -> Path:
    return ws.settings.workspace / "run" / f"refreshing-project-{ws.project.id}"


@contextmanager
def refreshing(ws: Workspace) -> Iterator[None]:
    """Mark the project's pre-annotations as being refreshed while the block runs: its background
    pretraining waits between its batches meanwhile (`refreshing_now`). On a small machine the two
    would share the cores (a fine-tuning measured several times slower beside it), and a person
    labeling waits on the refresh, nobody on the pretraining. A mark left by a killed process does
    not count."""
    folder = _refreshing_marks(ws)
    folder.mkdir(parents=True, exist_ok=True)
    for left in folder.iterdir():
        if dead_pid_in(left.name):
            left.unlink(missing_ok=True)
    mark = folder / owned_name("refresh")
    mark.touch()
    try:
        yield
    finally:
        mark.unlink(missing_ok=True)


def refreshing_now(ws: Workspace) -> bool:
    """Whether a live process is refreshing the project's pre-annotations (`refreshing`)."""
    folder = _refreshing_marks(ws)
    return folder.is_dir() and any(not dead_pid_in(mark.name) for mark in folder.iterdir())


def cold_start(ws: Workspace) -> bool:
    """Whether "Label next" should pick typical images of unlabeled clusters rather than uncertain ones:
    the model starts from a pretrained backbone (whose embeddings mean something before any label)
    and fewer than `select.cold_start_below` images are labeled (the model is not trusted yet)."""
    latest = ws.data.latest()
    labeled = len(read_manifest(ws.data.checkout(latest))) if latest else 0
    return labeled < ws.params.select.cold_start_below and pretrained_run(ws, ws.params.train.architecture) is not None


def publish_cold_start(ws: Workspace) -> list[int]:
    """Before the first model: the "Label next" tab from the pretrained backbone alone (typical images
    of clusters nobody labeled yet). Returns its task ids ([] without a pretrained backbone)."""
    architecture = ws.params.train.architecture
    run = pretrained_run(ws, architecture)
    if run is None:
        return []
    backbone = backbone_for(ws, architecture, 0, run)
    if backbone is None:
        return []  # pretrained for another shape of the architecture: a new pretraining is due
    state = backbone.state
    options, classes = ws.params.architectures.get(architecture, {}), len(ws.project.config.labels)
    tasks = ws.label_studio.unlabeled_tasks(ws.project.id)
    decoded, _, _ = decode_unlabeled(ws, tasks, ws.params.train.image_size)
    ids = list(decoded)
    embeddings = embed_with(state, architecture, options, classes, to_tensor([decoded[t] for t in ids], ws.params.train.image_size))
    _, folder = latest_snapshot(ws)
    manifest = read_manifest(folder)
    labeled = (embed_with(state, architecture, options, classes, load_images([folder / p for p in manifest["image"]], ws.params.train.image_size))
               if folder is not None and not manifest.empty else np.empty((0, embeddings.shape[1] if len(embeddings) else 0)))
    order = rank_typical(embeddings, labeled, ws.params.select.batch, seed=ws.params.train.seed)
    picked = [ids[i] for i in order[: ws.params.select.batch]]
    publish_views(ws, picked, [int(t) for t in suspects(ws)["task_id"]])
    return picked


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
    if tags.get("flywheel.architecture", "") != architecture or tags.get(TAG_BACKBONE, "") != (backbone.run_id if backbone else ""):
        return None
    if tags.get("flywheel.backbone_frozen") == "true":
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


def train(
    ws: Workspace, snapshot_version: SnapshotVersion, architecture: str, progress: bool = True, warm: bool = False,
    parallel: bool = False,
) -> TrainedModel:
    """Train one architecture on the snapshot of `snapshot_version`, read by its revision: from
    scratch, or with `warm` (the served loop's fast path) by fine-tuning the champion's weights for
    `train.finetune_steps` steps when the champion is of this architecture. With `parallel` (the
    scheduled full retrain), on `retrain.devices` processes (DDP) when params.yaml says so."""
    p = ws.params.train
    folder = ws.data.checkout(snapshot_version)
    rows = training_rows(read_manifest(folder))
    pretrained = pretrained_run(ws, architecture)
    backbone = backbone_for(ws, architecture, len(rows), pretrained) if pretrained is not None else None
    start = champion_to_tune(ws, architecture, backbone) if warm else None
    schedule = (
        dict(min_steps=0, max_steps=p.finetune_steps, lr=p.finetune_lr) if start
        else dict(min_steps=p.min_steps, max_steps=p.max_steps, lr=p.lr)
    )
    tags = run_tags(ws, snapshot_version, architecture)
    if start:
        tags["flywheel.fine_tuned_from"] = start[0].model_version
    if backbone is not None:
        tags.update({TAG_BACKBONE: backbone.run_id, "flywheel.backbone_frozen": str(backbone.frozen).lower()})
    with ws.models.calling(f"track the training of {architecture}"):
        return fit(
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
            seed=p.seed,
            tracking_uri=ws.settings.mlflow_tracking_uri,
            experiment=ws.params.registry.experiment,
            run_tags=tags,
            progress=progress,
            start_from=start[1] if start else None,
            backbone=backbone,
            **(dict(devices=ws.params.retrain.devices, accelerator=ws.params.retrain.accelerator,
                    strategy=ws.params.retrain.strategy) if parallel else {}),
            **schedule,
        )


def register(ws: Workspace, trained: TrainedModel) -> Promotion:
    """Log and register the model; move `champion` if it does better on the same val set."""
    recipe = Recipe(
        task=ws.task.name,
        architecture=trained.architecture,
        options=dict(ws.params.architectures.get(trained.architecture, {})),
        labels=list(trained.model.labels),
        image_size=int(trained.model.image_size),
    )
    registered = ws.models.register(trained.model, trained.run_id, recipe)
    pause_point("register")  # registered, the champion not judged yet
    ws.models.set_tags(trained.run_id, {TAG_REGISTERED: str(registered.version)})
    labels = list(ws.project.config.labels)

    def judge(champion: Any) -> Any:
        same_task = type(champion) is type(trained.model) and list(champion.labels) == labels
        return ws.task.evaluate(champion, trained.val_set, labels) if same_task else None

    promotion = ws.models.promote_if_better(registered, trained.scores, judge, ws.task.metric)
    ws.models.set_tags(trained.run_id, {"flywheel.promoted": str(promotion.promoted).lower()})
    return promotion


def _unreadable_unlabeled(ws: Workspace) -> set[int]:
    """Unlabeled tasks the last write-back could not read an image of (they never get a prediction)."""
    return {int(t) for t in _attention(ws).get("unlabeled", {})}


def predictions_stale(ws: Workspace, champion: RegisteredModel) -> bool:
    """True when Label Studio does not show a complete set of the champion's predictions and there is
    something to predict: the champion is not the version shown, or an unlabeled task (other than
    one with an unreadable image) lacks its prediction: new, or left out by a write cut short."""
    if ws.label_studio.shown_model_version(ws.project.id) == champion.model_version:
        return bool(ws.label_studio.untouched_without(ws.project.id, champion.model_version) - _unreadable_unlabeled(ws))
    return bool(ws.label_studio.unlabeled_tasks(ws.project.id)) or bool(suspect_predictions(ws))


def _embed_labeled(ws: Workspace, model: torch.nn.Module, folder: Path | None) -> np.ndarray:
    """Embeddings of the latest snapshot's images: what selection keeps its distance from."""
    manifest = read_manifest(folder)
    if folder is None or manifest.empty:
        return np.empty((0, 0))
    images = load_images([folder / p for p in manifest["image"]], model.image_size)
    return embed(ws.task, model, images, ws.project.config)


def marked(result: list[dict[str, Any]], mark: str) -> list[dict[str, Any]]:
    """A result whose regions carry ids starting with `mark`, so a Data Manager filter finds them."""
    return [{**region, "id": mark if i == 0 else f"{mark}-{i}"} for i, region in enumerate(result)]


def suspects(ws: Workspace) -> pd.DataFrame:
    """The last error check's suspects whose label is still the one it doubted (the label error table's rows)."""
    path = reports_dir(ws) / "label_errors.parquet"
    _, folder = latest_snapshot(ws)
    if not path.is_file() or folder is None:
        return pd.DataFrame(columns=["task_id", "label", "suggested", "suggested_probability"])
    table = pd.read_parquet(path)
    current = read_manifest(folder)
    return table[table["suspected"]].merge(current[["task_id", "label"]], on=["task_id", "label"])


def suspect_predictions(ws: Workspace) -> list[Prediction]:
    """The suspects as predictions of what the out-of-fold model suggests, scored by its confidence in
    that suggestion. A suggestion with no region (no box at all) cannot carry the mark, so it is not
    written (the suspect is still listed in its tab)."""
    config = ws.project.config
    results = [(r, ws.task.result_of(str(r.suggested), config)) for r in suspects(ws).itertuples()]
    return [
        Prediction(task_id=int(r.task_id), result=tuple(marked(result, SUSPECT_MARK)), score=round(float(r.suggested_probability), 4))
        for r, result in results if result
    ]


def publish_views(ws: Workspace, label_next: list[int], suspects: list[int]) -> dict[str, int]:
    """The Data Manager tabs people work from: the batch to label next, least confident first, and
    the suspected label errors, most confident suggestion first. Returns title -> view id."""
    ls, project = ws.label_studio, ws.project.id
    return {
        LABEL_NEXT_VIEW: ls.ensure_task_list_view(project, LABEL_NEXT_VIEW, label_next, LEAST_CONFIDENT_FIRST),
        SUSPECTS_VIEW: ls.ensure_task_list_view(project, SUSPECTS_VIEW, suspects, MOST_CONFIDENT_FIRST),
    }


def _attention(ws: Workspace) -> dict[str, dict[str, str]]:
    path = reports_dir(ws) / ATTENTION_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def publish_needs_attention(ws: Workspace, unlabeled: Mapping[int, str] | None = None) -> dict[int, str]:
    """List every task a person should look at in the "Needs attention" tab, and report each new one once.

    Two sources: the latest snapshot's (annotations and images left out, duplicated images), and,
    when given, the unlabeled tasks whose image the last write-back could not read.

    Returns:
        Task id -> the reason, for every task the tab holds.
    """
    previous = _attention(ws)
    latest = ws.data.latest()
    current = {
        "snapshot": {str(t): r for t, r in (latest.needs_attention if latest else {}).items()},
        "unlabeled": {str(t): r for t, r in unlabeled.items()} if unlabeled is not None else previous.get("unlabeled", {}),
    }
    seen = {**previous.get("snapshot", {}), **previous.get("unlabeled", {})}
    everything = {**current["snapshot"], **current["unlabeled"]}
    new = {t: r for t, r in everything.items() if seen.get(t) != r}
    for reason in new.values():
        log.warning("Needs attention: %s", reason)
    if current != previous or ws.label_studio.view_id(ws.project.id, ATTENTION_VIEW) is None:
        view = ws.label_studio.ensure_task_list_view(ws.project.id, ATTENTION_VIEW, map(int, everything), BY_ID)
        if new:
            log.warning(
                "%d task(s) need attention, %d new: %s/projects/%d/data?tab=%d (reasons in %s)",
                len(everything), len(new), ws.settings.label_studio_url, ws.project.id, view, reports_dir(ws) / ATTENTION_FILE,
            )
        folder = reports_dir(ws)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ATTENTION_FILE).write_text(json.dumps(current, indent=2))
    return {int(t): r for t, r in everything.items()}


def _keep_versions(ws: Workspace, champion: RegisteredModel) -> set[str]:
    """The model versions whose predictions stay on unlabeled tasks besides the champion's: the
    `predict.keep_versions - 1` newest other flywheel versions, and every other tool's."""
    prefix = f"{ws.params.registry.model_name}-v"
    versions = set(ws.label_studio.model_versions(ws.project.id)) - {champion.model_version}
    ours = sorted((v for v in versions if v.startswith(prefix) and v[len(prefix):].isdigit()), key=lambda v: int(v[len(prefix):]))
    keep_ours = ours[len(ours) - (ws.params.predict.keep_versions - 1):] if ws.params.predict.keep_versions > 1 else []
    return (versions - set(ours)) | set(keep_ours)


def write_back(ws: Workspace, champion: RegisteredModel, model: torch.nn.Module | None = None) -> int:
    """Predict and rank every unlabeled task with the champion and write it all as one model version.

    Each unlabeled task gets the champion's answer scored by its confidence (what a person sees);
    the predictions of earlier versions stay until `tidy` (deleting is Label Studio's slow part).
    The "Label next" tab holds the `select.batch` tasks worth labeling first (uncertain, and unlike
    what is labeled or picked already). Each suspected label error of the last error check gets the
    out-of-fold model's suggestion, scored by its confidence. Label Studio shows that version. An
    unlabeled task whose image cannot be read gets no prediction and goes to "Needs attention".

    Args:
        ws: The workspace.
        champion: The champion's registered version.
        model: The champion itself when the caller holds it (just trained): saves loading it.

    Returns:
        The number of predictions written.
    """
    model = model if model is not None else ws.models.load(champion)
    tasks = ws.label_studio.unlabeled_tasks(ws.project.id)
    decoded, problems, sizes = decode_unlabeled(ws, tasks, model.image_size)
    outputs = infer_images(ws.task, model, decoded, ws.project.config, ws.params.predict.batch_size, sizes=sizes)
    select = ws.params.select
    _, folder = latest_snapshot(ws)
    labeled = _embed_labeled(ws, model, folder)
    if cold_start(ws):  # the model is not trusted yet: typical images of clusters nobody labeled
        order = rank_typical(outputs.embeddings, labeled, select.batch, seed=ws.params.train.seed)
    else:
        order = rank_for_labeling(outputs.uncertainty, outputs.embeddings, labeled, select.batch, select.candidates)
    predictions = [
        Prediction(task_id=task_id, result=tuple(reading.result), score=reading.confidence)
        for task_id, reading in zip(outputs.task_ids, outputs.readings, strict=True)
    ]
    written = ws.label_studio.write_predictions(
        ws.project, predictions, champion.model_version, after_batch=lambda: pause_point("write-back"), untouched=tasks
    )
    doubted = suspect_predictions(ws)
    written += ws.label_studio.sync_marked_predictions(ws.project, doubted, champion.model_version, SUSPECT_MARK)
    if predictions or doubted:  # Label Studio refuses to show a version with no predictions
        ws.label_studio.show_model_version(ws.project.id, champion.model_version)
    publish_views(ws, [outputs.task_ids[i] for i in order[: select.batch]], [int(t) for t in suspects(ws)["task_id"]])
    publish_needs_attention(ws, problems)
    return written


def tidy(ws: Workspace, should_stop: Callable[[], bool] = lambda: False) -> int:
    """Delete superseded pre-annotations from the unlabeled tasks: every flywheel version but the
    champion's (and the `predict.keep_versions - 1` before it); other tools' stay. In small chunks,
    asking `should_stop` before each, so it runs while the loop is idle and yields to new labels.

    Returns:
        The number of predictions deleted.
    """
    champion = ws.models.champion()
    if champion is None:
        return 0
    keep = _keep_versions(ws, champion) | {champion.model_version}
    return ws.label_studio.tidy_predictions(ws.project, keep, should_stop=should_stop)


def label_next(ws: Workspace) -> list[int]:
    """Task ids of the "Label next" tab, in its order (empty before the first model)."""
    view = ws.label_studio.view_id(ws.project.id, LABEL_NEXT_VIEW)
    return [int(t["id"]) for t in ws.label_studio.view_tasks(ws.project.id, view)] if view else []


def labels_checked(ws: Workspace, snapshot_version: SnapshotVersion) -> bool:
    """True when the label error check already ran on this snapshot."""
    return bool(ws.models.runs_tagged({TAG_KIND: "label-errors", TAG_MD5: snapshot_version.md5}))


def reported(ws: Workspace, champion: RegisteredModel) -> bool:
    """True when the strategy report for the latest snapshot and this champion exists."""
    latest = ws.data.latest()
    return latest is None or bool(ws.models.runs_tagged(
        {TAG_KIND: "report", TAG_MD5: latest.md5, "flywheel.champion": champion.model_version}
    ))


def check_labels(
    ws: Workspace, snapshot_version: SnapshotVersion, progress: Callable[[str], None] = lambda message: None
) -> pd.DataFrame:
    """Rank every label of the snapshot by how likely it is wrong (k-fold + cleanlab), keep the table in
    the workspace for write-back, and log it to MLflow as a table with its summary metrics."""
    p, e = ws.params.train, ws.params.errors
    folder = ws.data.checkout(snapshot_version)
    manifest = training_rows(read_manifest(folder))
    table, accuracy = find_label_errors(
        ws.task, folder, manifest, ws.project.config.labels, p.architecture,
        ws.params.architectures.get(p.architecture, {}), folds=e.folds, steps=e.steps, image_size=p.image_size,
        batch_size=p.batch_size, lr=p.lr, augment=p.augment, seed=p.seed, progress=progress,
        backbone=backbone_for(ws, p.architecture, len(manifest)),
    )
    out = reports_dir(ws)
    out.mkdir(parents=True, exist_ok=True)
    table["snapshot_rev"] = snapshot_version.rev
    path = out / "label_errors.parquet"
    if _checked_rev(path) <= _rev_number(snapshot_version.rev):  # a check of an older snapshot never replaces a newer one's
        partial = out / f".label_errors-{owner().replace(':', '-')}.parquet"
        table.to_parquet(partial, index=False)
        partial.replace(path)  # whole or not at all: a write-back may read it meanwhile
    tags = {**run_tags(ws, snapshot_version, p.architecture), TAG_KIND: "label-errors",
            "mlflow.runName": f"label-errors@{snapshot_version.rev}"}
    ws.models.record_run(
        tags,
        params={"folds": e.folds, "steps": e.steps},
        metrics={"labeled": len(table), "suspected": int(table["suspected"].sum()), f"out_of_fold_{ws.task.metric}": accuracy},
        table=(table.drop(columns=["image", "snapshot_rev"]), "label_errors.json"),
    )
    return table


def _rev_number(rev: str) -> int:
    return int(rev.rsplit("-", 1)[1]) if rev.rsplit("-", 1)[-1].isdigit() else 0


def _checked_rev(path: Path) -> int:
    """The snapshot number the label error table at `path` was computed on (0: none, or from before this was recorded)."""
    if not path.is_file():
        return 0
    revs = pd.read_parquet(path, columns=None).get("snapshot_rev")
    return _rev_number(str(revs.iloc[0])) if revs is not None and len(revs) else 0


def learning_points(ws: Workspace) -> list[LearningPoint]:
    """(labels, validation score) of every registered model of the loop's architecture."""
    runs = ws.models.runs_tagged({"flywheel.architecture": ws.params.train.architecture}, registered=True, max_results=1000)
    points = {}
    key = f"best_val_{ws.task.metric}"
    for run in sorted(runs, key=lambda r: r.info.start_time):
        m = run.data.metrics
        if key in m and "train_images" in m:
            labels = int(m["train_images"] + m.get("val_images", 0))
            points[labels] = LearningPoint(labels, float(m[key]), run.data.tags.get("flywheel.dvc_rev", ""))
    return list(points.values())


def report(ws: Workspace, champion: RegisteredModel) -> tuple[Report, Path]:
    """Build the strategy report, write it into the workspace (HTML + PNGs + JSON), log it to MLflow."""
    labels = list(ws.project.config.labels)
    task = ws.task
    latest, folder = latest_snapshot(ws)
    manifest = training_rows(read_manifest(folder))
    model = ws.models.load(champion)
    val = manifest[manifest["split"] == "val"]
    data = task.datamodule(folder or Path("."), val, labels, model.image_size, 1, augment=False)
    data.setup()
    scores = task.evaluate(model, data.val_set, labels)
    acceptance = measure_acceptance(ws.label_studio.labeled_tasks(ws.project.id), ws.project.config, task)
    counts = pd.Series([c for target in manifest["label"] for c in task.classes_in(target)], dtype="object").value_counts().to_dict()
    val_counts = pd.Series([c for target in val["label"] for c in task.classes_in(target)], dtype="object").value_counts()
    result = build_report(
        learning_points(ws), labels, counts, scores.confusion, acceptance, ws.params.report.target_accuracy,
        per_class=scores.per_class, metric_title=task.metric_title, per_class_title=task.per_class_metric.upper(),
        labeled=len(manifest),
        # per-class figures from the label check's out-of-fold predictions over every label, when it has
        # checked this snapshot; else from the validation split, with its support
        out_of_fold=read_out_of_fold(reports_dir(ws) / "label_errors.parquet", labels, snapshot_rev=latest.rev if latest else None),
        support={label: int(val_counts.get(label, 0)) for label in labels}, count_noun=task.count_noun,
    )
    stats = read_stats(ws.settings.workspace, ws.params.registry.model_name)
    served = stats is not None and stats.get("model_version") == champion.model_version  # another model's answers say nothing of this one
    if served and hasattr(data.val_set, "tensors"):  # classification: its val split is images and targets
        readings, _ = task.read(model, data.val_set.tensors[0], ws.project.config)
        view = production_view(stats, [r.confidence for r in readings], ws.params.production.route_below)
        result = dataclasses.replace(result, production=view)
    out = reports_dir(ws) / "report"
    path = write_report(result, labels, out, f"flywheel report: {ws.project.title}", strategy=reports_dir(ws) / "strategy")
    tags = {TAG_KIND: "report", TAG_PROJECT: str(ws.project.id), "flywheel.champion": champion.model_version, TAG_OWNER: owner()}
    if latest is not None:
        tags.update({TAG_MD5: latest.md5, "flywheel.dvc_rev": latest.rev, "mlflow.runName": f"report@{latest.rev}"})
    metrics = {"labeled": float(result.labeled)}
    if acceptance.rate is not None:
        metrics["acceptance_rate"] = acceptance.rate
    if result.labels_to_target is not None:
        metrics["labels_to_target"] = float(result.labels_to_target)
    if result.production is not None:
        metrics.update(production_share_routed=result.production.share_routed, production_ks=result.production.ks_statistic,
                       production_median_confidence=result.production.production_median)
    ws.models.record_run(tags, metrics=metrics, artifacts=(out, "report"))
    return result, path


def strategy_items(ws: Workspace) -> list[Labeled]:
    """The project's labeled images with their masks, in the order people labeled them, for
    `flywheel strategy`: labeling with masks is timed by each annotation's `lead_time` (the costs in
    params.yaml where Label Studio has none), boxes by params.yaml's cost per box.

    Raises:
        SettingsError: The project is not labeled with masks.
    """
    if ws.task.name != "segmentation":
        raise SettingsError(
            f"flywheel strategy compares boxes and masks on images labeled with masks; project {ws.project.title!r} is "
            f"{ws.task.name}. Point params.yaml at a <BrushLabels> or <PolygonLabels> project, or pass --dataset with a "
            "COCO file that has segmentation."
        )
    costs = ws.params.strategy.seconds_per_object
    found: list[tuple[Any, Labeled]] = []
    for raw in ws.label_studio.labeled_tasks(ws.project.id):
        task = task_from_json(raw)
        annotation = current_annotation(task)
        image = resolve_image(ws, task.id, task.data) if annotation is not None else None
        if annotation is None or isinstance(image, ImageError) or image is None:
            continue
        try:
            target = ws.task.target_of(annotation, ws.project.config, task.id, image.path)
        except AnnotationError as e:
            log.warning("Strategy comparison leaves out %s", e)
            continue
        seconds = costs_of(json.loads(target), costs)
        if annotation.lead_time and annotation.lead_time > 0:
            seconds["masks"] = annotation.lead_time
        found.append((annotation.updated_at, Labeled(image.path, target, seconds)))
    return [item for _, item in sorted(found, key=lambda pair: pair[0])]
