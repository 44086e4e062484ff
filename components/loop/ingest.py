"""The loop's first stage: poll -> snapshot (aside) -> validate -> version.

Fresh annotations since the cursor become the next snapshot, built aside from the latest one, gated
on the data contract and versioned with DVC; the cursor advances in the same commit. Run holding the
cursor lock, so the latest snapshot a caller read before `poll` is still the latest at `version`.
A task whose annotation or image is unusable is left out and quarantined with the reason; it never
stops the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.adapters.label_studio import OVERLAP_S, ChangeSet
from components.adapters.versioning import SnapshotVersion
from components.core.errors import DataError
from components.core.faults import pause_point
from components.core.conversions import current_annotation
from components.data.images import ImageError, StoredImage
from components.data.snapshot import apply_changes, due_for_retry, duplicates, read_manifest, real_changes, write_snapshot
from components.data.validation import ValidationReport, validate_snapshot
from components.loop.workspace import Workspace, snapshot_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagedSnapshot:
    """A snapshot built aside, not versioned yet."""

    folder: Path
    manifest: pd.DataFrame
    quarantine: dict[int, dict[str, Any]]
    duplicates: dict[int, str]


def poll(ws: Workspace, latest: SnapshotVersion | None) -> ChangeSet:
    """Annotations changed since the cursor of `latest` (the last versioned snapshot) that really
    changed (a task touched only by a prediction edit is not counted), and the tasks left out for an
    image fetch that may work now (`images.retry_failed_s` passed)."""
    folder = snapshot_folder(ws, latest)
    changes = ws.label_studio.fetch_changed(ws.project.id, latest.cursor if latest else None, overlap_s=OVERLAP_S)
    pause_point("poll")
    quarantine = latest.quarantine if latest else {}
    changed = real_changes(read_manifest(folder), quarantine, changes.tasks, ws.project.config.data_key)
    seen = {t.id for t in changed}
    retried = [ws.label_studio.labeled_task(t) for t in due_for_retry(quarantine) if t not in seen]
    return ChangeSet((*changed, *retried), changes.cursor)


def resolve_image(ws: Workspace, task_id: int, data: Mapping[str, Any]) -> StoredImage | ImageError:
    """A task's image fetched and decoded once as the model will see it, or why it cannot be."""
    try:
        image = ws.images.resolve(task_id, data, ws.project.config.data_key)
        ws.images.check(task_id, image, ws.params.train.image_size)
        return image
    except ImageError as e:
        return e


def snapshot(ws: Workspace, latest: SnapshotVersion | None, changes: ChangeSet, folder: Path) -> StagedSnapshot:
    """Apply the changes to `latest` (the last versioned snapshot, the one `changes` were polled
    against) and write the next snapshot into `folder` (a staging folder).

    A changed task whose annotation or image cannot be used is left out and quarantined with the
    reason; the rest goes on.
    """
    previous_folder = snapshot_folder(ws, latest)
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
