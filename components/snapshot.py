"""Snapshots: the labeled set at one moment, as a manifest (parquet) plus content-addressed images.

A snapshot is cumulative: the previous manifest with the rows of changed tasks replaced (or dropped
when a task's annotations were deleted). The train/validation split is a function of each image's
content hash, so an image never changes side between iterations.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from components.conversions import LabeledTask, current_annotation, label_of
from components.errors import AnnotationError
from components.labeling_config import LabelingConfig

MANIFEST = "manifest.parquet"
IMAGES = "images"
COLUMNS = ["task_id", "image", "sha256", "label", "annotator", "updated_at", "split"]


def split_of(sha256: str, val_percent: int) -> str:
    """'val' or 'train', fixed by the image's content hash."""
    return "val" if int(sha256[:8], 16) % 100 < val_percent else "train"


def empty_manifest() -> pd.DataFrame:
    """A manifest with no rows and the right columns."""
    return pd.DataFrame({c: pd.Series(dtype="int64" if c == "task_id" else "object") for c in COLUMNS})


def apply_changes(
    previous: pd.DataFrame,
    tasks: Iterable[LabeledTask],
    config: LabelingConfig,
    val_percent: int,
) -> pd.DataFrame:
    """The previous manifest updated with the current annotations of changed tasks.

    Args:
        previous: The last snapshot's manifest (or `empty_manifest()`).
        tasks: Changed tasks with their current annotations.
        config: The labeling config (label set, tag names).
        val_percent: Share of images in the validation split.

    Returns:
        The new manifest, sorted by task id. `image` is the path inside the snapshot.

    Raises:
        AnnotationError: Some annotations cannot be read (unknown label, empty result...). The
            message lists every such task, not just the first; nothing is changed.
    """
    tasks = list(tasks)
    rows, problems, bad_ids = [], [], []
    for task in tasks:
        annotation = current_annotation(task)
        if annotation is None:
            continue
        try:
            label = label_of(annotation, config, task.id)
        except AnnotationError as e:
            problems.append(str(e))
            bad_ids.extend(e.task_ids)
            continue
        sha = str(task.data["sha256"])
        suffix = Path(str(task.data.get(config.data_key, ""))).suffix.lower() or ".png"
        rows.append(
            {
                "task_id": task.id,
                "image": f"{IMAGES}/{sha}{suffix}",
                "sha256": sha,
                "label": label,
                "annotator": annotation.annotator,
                "updated_at": annotation.updated_at.isoformat(),
                "split": split_of(sha, val_percent),
            }
        )
    if problems:
        raise AnnotationError(
            f"{len(problems)} annotation(s) cannot be trained on; nothing was snapshotted and the "
            "cursor did not move:\n  " + "\n  ".join(problems),
            bad_ids,
        )
    changed = {t.id for t in tasks}
    kept = previous[~previous["task_id"].isin(changed)]
    frames = [f for f in (kept, pd.DataFrame(rows, columns=COLUMNS)) if len(f)]
    manifest = pd.concat(frames, ignore_index=True) if frames else empty_manifest()
    return manifest.sort_values("task_id", ignore_index=True)[COLUMNS]


def write_snapshot(manifest: pd.DataFrame, sources: Mapping[str, Path], folder: Path) -> Path:
    """Write the manifest and its images into `folder` (replacing what was there).

    Images are stored by content hash, so unchanged images are not copied again and DVC stores each
    one once across all snapshots.

    Args:
        manifest: From `apply_changes`.
        sources: sha256 -> the original file (Label Studio's local file) of each image not yet in
            the folder. A missing or unreadable source is left for validation to report by task.
        folder: The snapshot folder tracked by DVC.

    Returns:
        The manifest path.
    """
    images = folder / IMAGES
    images.mkdir(parents=True, exist_ok=True)
    wanted = dict(zip(manifest["image"], manifest["sha256"], strict=True))
    for stale in images.iterdir():
        if f"{IMAGES}/{stale.name}" not in wanted:
            stale.unlink()
    for image, sha in wanted.items():
        target = folder / image
        source = sources.get(sha)
        if not target.exists() and source is not None and source.is_file():
            shutil.copyfile(source, target)
    path = folder / MANIFEST
    manifest.to_parquet(path, index=False)
    return path


def read_manifest(folder: Path) -> pd.DataFrame:
    """The manifest of a snapshot folder, or an empty one when there is none yet."""
    path = folder / MANIFEST
    return pd.read_parquet(path) if path.exists() else empty_manifest()
