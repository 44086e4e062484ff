"""The label check, on its own schedule: every label of a snapshot ranked by how likely it is wrong
(k-fold out-of-fold probabilities + cleanlab). Its table stays in the workspace's reports, where the
next write-back reads the suspects from (`components.loop.publish.suspects`), and is logged to MLflow."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from components.adapters.versioning import SnapshotVersion
from components.core.faults import owner
from components.core.tags import KIND_LABEL_ERRORS, TAG_KIND, TAG_MD5, TAG_RUN_NAME
from components.data.snapshot import read_manifest, training_rows
from components.learning.label_errors import find_label_errors
from components.loop.pool import backbone_for
from components.loop.train import log_snapshot_input, run_tags
from components.loop.workspace import LABEL_ERRORS_FILE, Workspace, reports_dir


def labels_checked(ws: Workspace, snapshot_version: SnapshotVersion) -> bool:
    """True when the label error check already ran on this snapshot."""
    return bool(ws.models.runs_tagged({TAG_KIND: KIND_LABEL_ERRORS, TAG_MD5: snapshot_version.md5}))


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
        batch_size=p.batch_size, lr=p.lr, augment=p.augment, copy_paste=p.copy_paste, compute=ws.compute, seed=p.seed, progress=progress,
        backbone=backbone_for(ws, p.architecture, len(manifest)),
    )
    out = reports_dir(ws)
    out.mkdir(parents=True, exist_ok=True)
    table["snapshot_rev"] = snapshot_version.rev
    path = out / LABEL_ERRORS_FILE
    if _checked_rev(path) <= _rev_number(snapshot_version.rev):  # a check of an older snapshot never replaces a newer one's
        partial = out / f".label_errors-{owner().replace(':', '-')}.parquet"
        table.to_parquet(partial, index=False)
        partial.replace(path)  # whole or not at all: a write-back may read it meanwhile
    tags = {**run_tags(ws, snapshot_version, p.architecture), TAG_KIND: KIND_LABEL_ERRORS,
            TAG_RUN_NAME: f"label-errors@{snapshot_version.rev}"}
    run_id = ws.models.record_run(
        tags,
        params={"folds": e.folds, "steps": e.steps},
        metrics={"labeled": len(table), "suspected": int(table["suspected"].sum()), f"out_of_fold_{ws.task.metric}": accuracy},
        table=(table.drop(columns=["image", "snapshot_rev"]), "label_errors.json"),
    )
    log_snapshot_input(ws, run_id, snapshot_version, len(manifest), "label-check")
    return table


def _rev_number(rev: str) -> int:
    return int(rev.rsplit("-", 1)[1]) if rev.rsplit("-", 1)[-1].isdigit() else 0


def _checked_rev(path: Path) -> int:
    """The snapshot number the label error table at `path` was computed on (0: none, or from before this was recorded)."""
    if not path.is_file():
        return 0
    revs = pd.read_parquet(path, columns=None).get("snapshot_rev")
    return _rev_number(str(revs.iloc[0])) if revs is not None and len(revs) else 0
