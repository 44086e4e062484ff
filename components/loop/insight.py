"""The loop's last stage, while it is idle: is the annotation strategy working? The strategy report
(learning curve, classes needing labels, confused pairs, acceptance of suggestions, production),
written into the workspace and logged to MLflow once per snapshot and champion; and the labeled
images `flywheel strategy` compares boxes and masks on."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from components.adapters.registry import RegisteredModel
from components.adapters.versioning import SnapshotVersion
from components.core.errors import AnnotationError, SettingsError
from components.core.faults import owner
from components.core.tags import (
    KIND_REPORT,
    SCHEDULE_BACKGROUND,
    TAG_ARCHITECTURE,
    TAG_CHAMPION,
    TAG_DVC_REV,
    TAG_KIND,
    TAG_MD5,
    TAG_OWNER,
    TAG_PROJECT,
    TAG_RUN_NAME,
    TAG_SCHEDULE,
)
from components.core.conversions import current_annotation, task_from_json
from components.data.images import ImageError
from components.data.snapshot import read_manifest, training_rows
from components.loop.ingest import resolve_image
from components.loop.workspace import LABEL_ERRORS_FILE, Workspace, reports_dir, snapshot_folder
from components.production.assist import seconds_with_assistant
from components.production.serving import read_stats
from components.studies.report import LearningPoint, Report, build_report, measure_acceptance, production_view, read_out_of_fold, write_report
from components.studies.strategy import Labeled, costs_of, suggestions_line

log = logging.getLogger(__name__)


def reported(ws: Workspace, champion: RegisteredModel, latest: SnapshotVersion | None) -> bool:
    """True when the strategy report for `latest` (the last versioned snapshot) and this champion exists."""
    return latest is None or bool(ws.models.runs_tagged(
        {TAG_KIND: KIND_REPORT, TAG_MD5: latest.md5, TAG_CHAMPION: champion.model_version}
    ))


def learning_points(ws: Workspace) -> list[LearningPoint]:
    """(labels, validation score) of every registered model of the loop's architecture."""
    runs = ws.models.runs_tagged({TAG_ARCHITECTURE: ws.params.train.architecture}, registered=True, max_results=1000)
    points = {}
    key = f"best_val_{ws.task.metric}"
    for run in sorted(runs, key=lambda r: r.info.start_time):
        m = run.data.metrics
        if key in m and "train_images" in m and run.data.tags.get(TAG_SCHEDULE) != SCHEDULE_BACKGROUND:  # the loop's own
            labels = int(m["train_images"] + m.get("val_images", 0))
            points[labels] = LearningPoint(labels, float(m[key]), run.data.tags.get(TAG_DVC_REV, ""))
    return list(points.values())


def report(ws: Workspace, champion: RegisteredModel, latest: SnapshotVersion | None) -> tuple[Report, Path]:
    """Build the strategy report on `latest` (the last versioned snapshot), write it into the workspace
    (HTML + PNGs + JSON), log it to MLflow."""
    labels = list(ws.project.config.labels)
    task = ws.task
    folder = snapshot_folder(ws, latest)
    manifest = training_rows(read_manifest(folder))
    model = ws.models.load(champion)
    val = manifest[manifest["split"] == "val"]
    data = task.datamodule(folder or Path("."), val, labels, model.image_size, 1, augment=False)
    data.setup()
    scores = task.evaluate(model, data.val_set, labels)
    costs = ws.params.strategy.effort_costs(task.drawn_as) if task.drawn_as else None
    acceptance = measure_acceptance(ws.label_studio.labeled_tasks(ws.project.id), ws.project.config, task, costs)
    counts = pd.Series([c for target in manifest["label"] for c in task.classes_in(target)], dtype="object").value_counts().to_dict()
    val_counts = pd.Series([c for target in val["label"] for c in task.classes_in(target)], dtype="object").value_counts()
    result = build_report(
        learning_points(ws), labels, counts, scores.confusion, acceptance, ws.params.report.target_accuracy,
        per_class=scores.per_class, metric_title=task.metric_title, per_class_title=task.per_class_metric.upper(),
        labeled=len(manifest),
        # per-class figures from the label check's out-of-fold predictions over every label, when it has
        # checked this snapshot; else from the validation split, with its support
        out_of_fold=read_out_of_fold(reports_dir(ws) / LABEL_ERRORS_FILE, labels, snapshot_rev=latest.rev if latest else None),
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
    tags = {TAG_KIND: KIND_REPORT, TAG_PROJECT: str(ws.project.id), TAG_CHAMPION: champion.model_version, TAG_OWNER: owner()}
    if latest is not None:
        tags.update({TAG_MD5: latest.md5, TAG_DVC_REV: latest.rev, TAG_RUN_NAME: f"report@{latest.rev}"})
    metrics = {"labeled": float(result.labeled)}
    if acceptance.rate is not None:
        metrics["acceptance_rate"] = acceptance.rate
    if acceptance.objects_kept is not None:
        metrics["objects_kept_rate"] = acceptance.objects_kept
    if acceptance.effort_saved is not None:
        metrics["effort_saved"] = acceptance.effort_saved
    if result.labels_to_target is not None:
        metrics["labels_to_target"] = float(result.labels_to_target)
    if result.production is not None:
        metrics.update(production_share_routed=result.production.share_routed, production_ks=result.production.ks_statistic,
                       production_median_confidence=result.production.production_median)
    ws.models.record_run(tags, metrics=metrics, artifacts=(out, "report"))
    return result, path


def strategy_suggestions(ws: Workspace) -> str | None:
    """The strategy report's line on what the project's own suggestions saved (None before any)."""
    task = ws.task
    if not task.drawn_as:
        return None
    acceptance = measure_acceptance(ws.label_studio.labeled_tasks(ws.project.id), ws.project.config, task,
                                    ws.params.strategy.effort_costs(task.drawn_as))
    return suggestions_line(task.drawn_as, acceptance.objects_kept, acceptance.effort_saved)


def strategy_items(ws: Workspace) -> list[Labeled]:
    """The project's labeled images with their masks, in the order people labeled them, for
    `flywheel strategy`: labeling with masks is timed by each annotation's `lead_time` (the costs in
    params.yaml where Label Studio has none), boxes by params.yaml's cost per box, masks with the assistant
    by a simulated person correcting GrabCut's masks of its objects with clicks (`assist.seconds_with_assistant`).

    Raises:
        SettingsError: The project is not labeled with masks.
    """
    if ws.task.name != "segmentation":
        raise SettingsError(
            f"flywheel strategy compares boxes and masks on images labeled with masks; project {ws.project.title!r} is "
            f"{ws.task.name}. Point params.yaml at a <BrushLabels> or <PolygonLabels> project, or pass --dataset with a "
            "COCO file that has segmentation."
        )
    costs, mask_costs = ws.params.strategy.seconds_per_object, ws.params.strategy.mask_costs()
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
        seconds["assisted"] = seconds_with_assistant(image.path, json.loads(target), mask_costs, ws.params.images.max_pixels)
        found.append((annotation.updated_at, Labeled(image.path, target, seconds)))
    return [item for _, item in sorted(found, key=lambda pair: pair[0])]
