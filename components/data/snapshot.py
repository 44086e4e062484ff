"""Snapshots: the labeled set at one moment, as a manifest (parquet) plus content-addressed images.

A snapshot is cumulative: the previous manifest with the rows of changed tasks replaced (or dropped
when a task's annotations were deleted). The train/validation split is a function of each image's
content hash, so an image never changes side between iterations.

Bad input is quarantined, not fatal: a task whose annotation cannot be trained on (unknown label,
empty result, ...) or whose image cannot be read is left out of the snapshot with the reason, and
the rest goes on. The quarantine is carried from snapshot to snapshot until the task changes again,
when it is checked anew.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from components.core.conversions import LabeledTask, current_annotation
from components.core.errors import AnnotationError, DataError
from components.data.images import StoredImage
from components.core.labeling_config import LabelingConfig

if TYPE_CHECKING:
    from components.core.task_type import TaskType

MANIFEST = "manifest.parquet"
IMAGES = "images"
COLUMNS = ["task_id", "image", "sha256", "label", "annotation_id", "annotator", "updated_at", "source", "split"]


def split_of(sha256: str, val_percent: int) -> str:
    """'val' or 'train', fixed by the image's content hash."""
    return "val" if int(sha256[:8], 16) % 100 < val_percent else "train"


def empty_manifest() -> pd.DataFrame:
    """A manifest with no rows and the right columns."""
    ints = ("task_id", "annotation_id")
    return pd.DataFrame({c: pd.Series(dtype="int64" if c in ints else "object") for c in COLUMNS})


def source_of(task: LabeledTask, data_key: str) -> str:
    """A short digest of the task's image URL: a task whose image is replaced has changed."""
    return hashlib.sha1(str(task.data.get(data_key, "")).encode()).hexdigest()[:16]


def state_key(annotation_id: int, updated_at: str, source: str) -> str:
    """What identifies a labeled task's state: which annotation, when it was saved, which image."""
    return f"{annotation_id}@{updated_at}#{source}"


def task_key(task: LabeledTask, data_key: str) -> str | None:
    """The state key of a task now (None when it has no annotation that counts)."""
    annotation = current_annotation(task)
    return state_key(annotation.id, annotation.updated_at.isoformat(), source_of(task, data_key)) if annotation else None


def real_changes(
    previous: pd.DataFrame, quarantine: Mapping[int, Mapping[str, object]], tasks: Iterable[LabeledTask], data_key: str
) -> tuple[LabeledTask, ...]:
    """The tasks whose annotation or image differs from what the last snapshot holds for them.

    A task's `updated_at` also moves when a prediction is added or deleted one by one (by flywheel
    or by another tool); those tasks are dropped here, so they neither count as new labels nor
    cost a snapshot.
    """
    held = {int(r.task_id): state_key(int(r.annotation_id), r.updated_at, r.source) for r in previous.itertuples()}
    held.update({int(t): str(q.get("key", "")) for t, q in quarantine.items()})
    return tuple(task for task in tasks if task_key(task, data_key) != held.get(task.id))


def due_for_retry(quarantine: Mapping[int, Mapping[str, object]], now: float | None = None) -> list[int]:
    """Quarantined tasks whose image failed for a reason that may pass (a timeout, a 5xx), due again."""
    now = time.time() if now is None else now
    return sorted(t for t, q in quarantine.items() if float(q.get("retry_after", float("inf"))) <= now)


@dataclass(frozen=True)
class SnapshotUpdate:
    """The next snapshot's content.

    Attributes:
        manifest: One row per usable labeled task, sorted by task id; `label` holds the task type's
            training target as text (a class name, or boxes as JSON).
        quarantine: Every task left out and why (carried ones and new ones), as task id ->
            {"reason": message naming the task, "key": its `task_key`, "retry_after": epoch seconds,
            only for an image fetch that may work later}.
    """

    manifest: pd.DataFrame
    quarantine: dict[int, dict[str, object]]


def apply_changes(
    previous: pd.DataFrame,
    previous_quarantine: Mapping[int, Mapping[str, object]],
    tasks: Iterable[LabeledTask],
    config: LabelingConfig,
    val_percent: int,
    images: Mapping[int, StoredImage | DataError],
    task_type: TaskType,
    retry_after_s: float = 600,
) -> SnapshotUpdate:
    """The previous manifest updated with the current annotations of changed tasks.

    Args:
        previous: The last snapshot's manifest (or `empty_manifest()`).
        previous_quarantine: The last snapshot's quarantine.
        tasks: Changed tasks with their current annotations.
        config: The labeling config (label set, tag names).
        val_percent: Share of images in the validation split.
        images: Task id -> its checked image, or the error that says why it cannot be used, for
            every changed task that has a current annotation.
        task_type: Turns an annotation into the training target (the `label` cell).
        retry_after_s: When a transient image failure is checked again (images.retry_failed_s).

    Returns:
        The new manifest (`image` is the path inside the snapshot) and quarantine. A changed task
        whose annotation or image is unusable is left out and quarantined; nothing else is lost.
    """
    tasks = list(tasks)
    changed = {t.id for t in tasks}
    quarantine = {t: dict(q) for t, q in previous_quarantine.items() if t not in changed}
    rows = []
    for task in tasks:
        annotation = current_annotation(task)
        if annotation is None:
            continue  # annotations deleted (or only skips): the task leaves the snapshot
        try:
            image = images[task.id]
            if isinstance(image, DataError):
                raise image
            label = task_type.target_of(annotation, config, task.id, image.path)
        except (AnnotationError, DataError) as e:
            quarantine[task.id] = {"reason": str(e), "key": task_key(task, config.data_key)}
            if getattr(e, "transient", False):
                quarantine[task.id]["retry_after"] = time.time() + retry_after_s
            continue
        rows.append(
            {
                "task_id": task.id,
                "image": f"{IMAGES}/{image.sha256}{image.suffix}",
                "sha256": image.sha256,
                "label": label,
                "annotation_id": annotation.id,
                "annotator": annotation.annotator,
                "updated_at": annotation.updated_at.isoformat(),
                "source": source_of(task, config.data_key),
                "split": split_of(image.sha256, val_percent),
            }
        )
    kept = previous[~previous["task_id"].isin(changed)]
    frames = [f for f in (kept, pd.DataFrame(rows, columns=COLUMNS)) if len(f)]
    manifest = pd.concat(frames, ignore_index=True) if frames else empty_manifest()
    manifest = manifest.astype({"task_id": "int64", "annotation_id": "int64"})
    return SnapshotUpdate(manifest.sort_values("task_id", ignore_index=True)[COLUMNS], quarantine)


def duplicates(manifest: pd.DataFrame) -> dict[int, str]:
    """Tasks that show the same image as a task labeled later: task id -> what to do about it.

    Only the latest label of an image is trained on (`training_rows`); the others are listed so a
    person can delete the duplicate task or make the labels agree.
    """
    found = {}
    for _, group in manifest[manifest.duplicated("sha256", keep=False)].groupby("sha256"):
        ordered = group.sort_values(["updated_at", "task_id"])
        latest = ordered.iloc[-1]
        for row in ordered.iloc[:-1].itertuples():
            disagree = f" as {row.label!r}, while task {latest.task_id} says {latest.label!r}" if row.label != latest.label else ""
            found[int(row.task_id)] = (
                f"Task {row.task_id}: shows the same image as task {latest.task_id} (labeled later){disagree}; only the "
                "latest label of an image is trained on. Delete the duplicate task, or make the labels agree."
            )
    return found


def training_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows a model trains on: one per image, the latest label of each."""
    ordered = manifest.sort_values(["updated_at", "task_id"])
    return ordered.drop_duplicates("sha256", keep="last").sort_values("task_id", ignore_index=True)


def write_snapshot(
    manifest: pd.DataFrame, sources: Mapping[str, Path], folder: Path, previous: Path | None = None
) -> Path:
    """Write the manifest and its images into an empty `folder` (a staging folder).

    Images are stored by content hash: those the previous snapshot holds are hard-linked from it
    (no copy), new ones are copied from `sources`; DVC stores each once across all snapshots.

    Args:
        manifest: From `apply_changes`.
        sources: sha256 -> a local file with the image (for images the previous snapshot lacks).
        folder: The new snapshot folder.
        previous: The previous snapshot's folder, if any.

    Returns:
        The manifest path.
    """
    images = folder / IMAGES
    images.mkdir(parents=True, exist_ok=True)
    for image, sha in dict(zip(manifest["image"], manifest["sha256"], strict=True)).items():
        target = folder / image
        if target.exists():
            continue
        old = previous / image if previous is not None else None
        if old is not None and old.is_file():
            try:
                target.hardlink_to(old)
                continue
            except OSError:
                pass
        shutil.copyfile(old if old is not None and old.is_file() else sources[sha], target)
    path = folder / MANIFEST
    manifest.to_parquet(path, index=False)
    return path


def read_manifest(folder: Path | None) -> pd.DataFrame:
    """The manifest of a snapshot folder, or an empty one when there is none (or no folder) yet.

    A manifest from before a column existed gets it with a value no task matches, so each of its
    tasks is read again once (and nothing is lost).
    """
    path = folder / MANIFEST if folder is not None else None
    if path is None or not path.exists():
        return empty_manifest()
    manifest = pd.read_parquet(path)
    for column, missing in (("annotation_id", -1), ("source", "")):
        if column not in manifest:
            manifest[column] = missing
    return manifest
