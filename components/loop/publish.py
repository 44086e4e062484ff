"""The loop's third stage: predict + rank -> write back -> views.

The champion's predictions go to every unlabeled task as one model version (keyed by it, so a rerun
never duplicates them), the last label check's suspects get the out-of-fold model's suggestion, and
the Data Manager tabs people work from are rewritten: "Label next", "Suspected label errors" and
"Needs attention". Superseded versions are deleted later, while the loop is idle (`tidy`). What
needs the latest snapshot takes it from its caller, which reads it once (holding the publish lock,
in the flows) rather than each step reading it again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from components.adapters.label_studio import (
    ATTENTION_VIEW,
    BY_ID,
    LABEL_NEXT_VIEW,
    LEAST_CONFIDENT_FIRST,
    MOST_CONFIDENT_FIRST,
    SUSPECT_MARK,
    SUSPECTS_VIEW,
)
from components.adapters.registry import RegisteredModel
from components.adapters.versioning import SnapshotVersion
from components.core.faults import pause_point
from components.core.conversions import Prediction
from components.data.images import ImageError, shown_size
from components.data.snapshot import read_manifest
from components.learning.prediction import embed, infer_images
from components.learning.pretraining import Pretrained, embed_with
from components.learning.selection import rank_for_labeling, rank_typical
from components.loop.pool import backbone_for, cold_start, fitting_backbone
from components.loop.workspace import LABEL_ERRORS_FILE, Workspace, reports_dir, snapshot_folder
from components.networks.compute import torch_device
from components.networks.preprocessing import load_images, to_tensor

log = logging.getLogger(__name__)

ATTENTION_FILE = "needs_attention.json"


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


def _unreadable_unlabeled(ws: Workspace) -> set[int]:
    """Unlabeled tasks the last write-back could not read an image of (they never get a prediction)."""
    return {int(t) for t in _attention(ws).get("unlabeled", {})}


def predictions_stale(ws: Workspace, champion: RegisteredModel, latest: SnapshotVersion | None) -> bool:
    """True when Label Studio does not show a complete set of the champion's predictions and there is
    something to predict: the champion is not the version shown, or an unlabeled task (other than
    one with an unreadable image) lacks its prediction: new, or left out by a write cut short.
    `latest`: the last versioned snapshot (whose labels say which suspects still stand)."""
    if ws.label_studio.shown_model_version(ws.project.id) == champion.model_version:
        return bool(ws.label_studio.untouched_without(ws.project.id, champion.model_version) - _unreadable_unlabeled(ws))
    if ws.label_studio.unlabeled_tasks(ws.project.id):
        return True
    return bool(suspect_predictions(ws, suspects(ws, read_manifest(snapshot_folder(ws, latest)))))


def _embed_labeled(ws: Workspace, model: torch.nn.Module, folder: Path | None, manifest: pd.DataFrame) -> np.ndarray:
    """Embeddings of the latest snapshot's images (`manifest`, in `folder`): what selection keeps its distance from."""
    if folder is None or manifest.empty:
        return np.empty((0, 0))
    images = load_images([folder / p for p in manifest["image"]], model.image_size)
    return embed(ws.task, model, images, ws.project.config)


def marked(result: list[dict[str, Any]], mark: str) -> list[dict[str, Any]]:
    """A result whose regions carry ids starting with `mark`, so a Data Manager filter finds them."""
    return [{**region, "id": mark if i == 0 else f"{mark}-{i}"} for i, region in enumerate(result)]


def suspects(ws: Workspace, manifest: pd.DataFrame) -> pd.DataFrame:
    """The last error check's suspects whose label is still the one it doubted in `manifest` (the
    latest snapshot's): the label error table's rows."""
    path = reports_dir(ws) / LABEL_ERRORS_FILE
    if not path.is_file() or manifest.empty:
        return pd.DataFrame(columns=["task_id", "label", "suggested", "suggested_probability"])
    table = pd.read_parquet(path)
    return table[table["suspected"]].merge(manifest[["task_id", "label"]], on=["task_id", "label"])


def suspect_predictions(ws: Workspace, suspected: pd.DataFrame) -> list[Prediction]:
    """The suspects (`suspects`) as predictions of what the out-of-fold model suggests, scored by its
    confidence in that suggestion. A suggestion with no region (no box at all) cannot carry the mark,
    so it is not written (the suspect is still listed in its tab)."""
    config = ws.project.config
    results = [(r, ws.task.result_of(str(r.suggested), config)) for r in suspected.itertuples()]
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


def publish_needs_attention(
    ws: Workspace, latest: SnapshotVersion | None, unlabeled: Mapping[int, str] | None = None
) -> dict[int, str]:
    """List every task a person should look at in the "Needs attention" tab, and report each new one once.

    Two sources: the snapshot `latest` (the last versioned one: annotations and images left out,
    duplicated images), and, when given, the unlabeled tasks whose image the last write-back could
    not read.

    Returns:
        Task id -> the reason, for every task the tab holds.
    """
    previous = _attention(ws)
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


def write_back(
    ws: Workspace, champion: RegisteredModel, latest: SnapshotVersion | None, model: torch.nn.Module | None = None
) -> int:
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
        latest: The last versioned snapshot: the labeled images selection keeps its distance from,
            the labels that say which suspects still stand, and its tasks that need attention.
        model: The champion itself when the caller holds it (just trained): saves loading it.

    Returns:
        The number of predictions written.
    """
    model = model if model is not None else ws.models.load(champion)
    tasks = ws.label_studio.unlabeled_tasks(ws.project.id)
    decoded, problems, sizes = decode_unlabeled(ws, tasks, model.image_size)
    try:
        model.to(torch_device(ws.compute))  # where params.yaml's compute says; back to the CPU below
        outputs = infer_images(ws.task, model, decoded, ws.project.config, ws.params.predict.batch_size, sizes=sizes)
        folder = snapshot_folder(ws, latest)
        manifest = read_manifest(folder)
        labeled = _embed_labeled(ws, model, folder, manifest)
    finally:
        model.cpu()
    select = ws.params.select
    if cold_start(ws, len(manifest)):  # the model is not trusted yet: typical images of clusters nobody labeled
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
    now = ws.data.latest()  # the labels as they are after the slow write: a label corrected meanwhile is no suspect
    if now is not None and (latest is None or now.rev != latest.rev):
        manifest = read_manifest(snapshot_folder(ws, now))
    suspected = suspects(ws, manifest)
    doubted = suspect_predictions(ws, suspected)
    written += ws.label_studio.sync_marked_predictions(ws.project, doubted, champion.model_version, SUSPECT_MARK)
    if predictions or doubted:  # Label Studio refuses to show a version with no predictions
        ws.label_studio.show_model_version(ws.project.id, champion.model_version)
    publish_views(ws, [outputs.task_ids[i] for i in order[: select.batch]], [int(t) for t in suspected["task_id"]])
    publish_needs_attention(ws, now, problems)
    return written


def publish_cold_start(ws: Workspace, latest: SnapshotVersion | None, pretrained: Pretrained | None = None) -> list[int]:
    """Before the first model: the "Label next" tab from the pretrained backbone alone (typical images
    of clusters nobody labeled yet in `latest`, the last versioned snapshot). `pretrained`: the
    backbone just pretrained, when the caller holds it; else the newest one is read from MLflow.
    Returns the tab's task ids ([] without a pretrained backbone)."""
    architecture = ws.params.train.architecture
    if pretrained is not None:
        backbone = fitting_backbone(ws, architecture, 0, pretrained.run_id, pretrained.state)
    else:
        backbone = backbone_for(ws, architecture, 0)
    if backbone is None:
        return []  # none yet, or pretrained for another shape of the architecture: a new pretraining is due
    state = backbone.state
    options, classes = ws.params.architectures.get(architecture, {}), len(ws.project.config.labels)
    tasks = ws.label_studio.unlabeled_tasks(ws.project.id)
    decoded, _, _ = decode_unlabeled(ws, tasks, ws.params.train.image_size)
    ids = list(decoded)
    embeddings = embed_with(state, architecture, options, classes, to_tensor([decoded[t] for t in ids], ws.params.train.image_size))
    folder = snapshot_folder(ws, latest)
    manifest = read_manifest(folder)
    labeled = (embed_with(state, architecture, options, classes, load_images([folder / p for p in manifest["image"]], ws.params.train.image_size))
               if folder is not None and not manifest.empty else np.empty((0, embeddings.shape[1] if len(embeddings) else 0)))
    order = rank_typical(embeddings, labeled, ws.params.select.batch, seed=ws.params.train.seed)
    picked = [ids[i] for i in order[: ws.params.select.batch]]
    publish_views(ws, picked, [int(t) for t in suspects(ws, manifest)["task_id"]])
    return picked


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
