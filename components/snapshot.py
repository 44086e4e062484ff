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

import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components.conversions import Annotation, LabeledTask, current_annotation, label_of
from components.errors import AnnotationError, DataError
from components.images import StoredImage
from components.labeling_config import LabelingConfig

MANIFEST = "manifest.parquet"
IMAGES = "images"
COLUMNS = ["task_id", "image", "sha256", "label", "annotation_id", "annotator", "updated_at", "split"]


def split_of(sha256: str, val_percent: int) -> str:
    """'val' or 'train', fixed by the image's content hash."""
    return "val" if int(sha256[:8], 16) % 100 < val_percent else "train"


def empty_manifest() -> pd.DataFrame:
    """A manifest with no rows and the right columns."""
    ints = ("task_id", "annotation_id")
    return pd.DataFrame({c: pd.Series(dtype="int64" if c in ints else "object") for c in COLUMNS})


def annotation_key(annotation: Annotation) -> str:
    """What identifies one saved state of an annotation: its id and when it was saved."""
    return f"{annotation.id}@{annotation.updated_at.isoformat()}"


def real_changes(
    previous: pd.DataFrame, quarantine: Mapping[int, Mapping[str, str]], tasks: Iterable[LabeledTask]
) -> tuple[LabeledTask, ...]:
    """The tasks whose current annotation differs from what the last snapshot holds for them.

    A task's `updated_at` also moves when a prediction is added or deleted one by one (by flywheel
    or by another tool); those tasks are dropped here, so they neither count as new labels nor
    cost a snapshot.
    """
    held = {int(r.task_id): f"{int(r.annotation_id)}@{r.updated_at}" for r in previous.itertuples()}
    held.update({int(t): q.get("annotation", "") for t, q in quarantine.items()})
    changed = []
    for task in tasks:
        annotation = current_annotation(task)
        now = annotation_key(annotation) if annotation else None
        if now != held.get(task.id):
            changed.append(task)
    return tuple(changed)


@dataclass(frozen=True)
class SnapshotUpdate:
    """The next snapshot's content.

    Attributes:
        manifest: One row per usable labeled task, sorted by task id.
        quarantine: Every task left out and why (carried ones and new ones), as
            task id -> {"reason": message naming the task, "annotation": its annotation_key}.
        new_problems: The quarantined tasks whose problem is new in this update (to report once).
    """

    manifest: pd.DataFrame
    quarantine: dict[int, dict[str, str]]
    new_problems: dict[int, str]


def apply_changes(
    previous: pd.DataFrame,
    previous_quarantine: Mapping[int, Mapping[str, str]],
    tasks: Iterable[LabeledTask],
    config: LabelingConfig,
    val_percent: int,
    images: Mapping[int, StoredImage | DataError],
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

    Returns:
        The new manifest (`image` is the path inside the snapshot) and quarantine. A changed task
        whose annotation or image is unusable is left out and quarantined; nothing else is lost.
    """
    tasks = list(tasks)
    changed = {t.id for t in tasks}
    quarantine = {t: dict(q) for t, q in previous_quarantine.items() if t not in changed}
    new_problems: dict[int, str] = {}
    rows = []
    for task in tasks:
        annotation = current_annotation(task)
        if annotation is None:
            continue  # annotations deleted (or only skips): the task leaves the snapshot
        try:
            label = label_of(annotation, config, task.id)
            image = images[task.id]
            if isinstance(image, DataError):
                raise image
        except (AnnotationError, DataError) as e:
            reason = str(e)
            quarantine[task.id] = {"reason": reason, "annotation": annotation_key(annotation)}
            if previous_quarantine.get(task.id, {}).get("reason") != reason:
                new_problems[task.id] = reason
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
                "split": split_of(image.sha256, val_percent),
            }
        )
    kept = previous[~previous["task_id"].isin(changed)]
    frames = [f for f in (kept, pd.DataFrame(rows, columns=COLUMNS)) if len(f)]
    manifest = pd.concat(frames, ignore_index=True) if frames else empty_manifest()
    manifest = manifest.astype({"task_id": "int64", "annotation_id": "int64"})
    return SnapshotUpdate(manifest.sort_values("task_id", ignore_index=True)[COLUMNS], quarantine, new_problems)


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
    """The manifest of a snapshot folder, or an empty one when there is none (or no folder) yet."""
    path = folder / MANIFEST if folder is not None else None
    return pd.read_parquet(path) if path is not None and path.exists() else empty_manifest()
