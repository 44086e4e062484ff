"""The steps of `dvc.yaml`: the same training over any versioned snapshot, reproducible with `dvc repro`.

These run without Label Studio: a snapshot is restored from the data registry and its DVC remote.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from components.core import compat
from components.core.errors import DataError
from components.core.labeling_config import LabelingConfig
from components.core.params import Params
from components.networks.compute import resolve
from components.core.tags import KIND_TRAINING, TAG_KIND, TAG_SNAPSHOT_PATH
from components.data.snapshot import read_manifest, training_rows
from components.tasks import task_type_of
from components.learning.training import fit
from components.data.validation import validate_snapshot
from components.adapters.versioning import find_registry


def fetch_snapshot(workspace: Path, title: str, rev: str, out: Path, project_id: int | None = None) -> str:
    """Restore snapshot `rev` ("latest" = the newest) of project `project_id` (else titled `title`) from the
    DVC remote into `out`.

    Returns:
        The rev restored.
    """
    registry = find_registry(workspace, title, project_id)
    if rev == "latest":
        rev = registry.latest().rev  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory(prefix="flywheel-restore-") as tmp:
        restored = registry.restore(rev, Path(tmp) / "registry")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(restored, out)
    return rev


def validate_folder(snapshot: Path, config: LabelingConfig, min_per_class: int, report: Path) -> None:
    """Run the data contract on a snapshot folder; write the report as JSON.

    Raises:
        DataError: The snapshot breaks the contract.
    """
    result = validate_snapshot(read_manifest(snapshot), snapshot, config.labels, min_per_class, task_type_of(config))
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps({"success": result.success, "failures": list(result.failures), **result.statistics}, indent=2))
    if not result.success:
        raise DataError(f"{snapshot}: {result.describe()}", list(result.task_ids))


def train_folder(snapshot: Path, config: LabelingConfig, params: Params, tracking_uri: str, out: Path) -> dict[str, Any]:
    """Train params.yaml's architecture on a snapshot folder; save the inference model to `out`."""
    p = params.train
    trained = fit(
        task_type_of(config), snapshot, training_rows(read_manifest(snapshot)), config.labels, p.architecture,
        params.architectures.get(p.architecture, {}),
        image_size=p.image_size, batch_size=p.batch_size, max_epochs=p.max_epochs, min_steps=p.min_steps, max_steps=p.max_steps, patience=p.patience,
        lr=p.lr, augment=p.augment, copy_paste=p.copy_paste, seed=p.seed, tracking_uri=tracking_uri,
        compute=resolve(params.compute.accelerator, 1, params.compute.precision),
        experiment=f"{params.registry.experiment}-dvc", run_tags={TAG_SNAPSHOT_PATH: str(snapshot), TAG_KIND: KIND_TRAINING},
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(trained.model, out)
    return trained.metrics


def evaluate_folder(snapshot: Path, config: LabelingConfig, model_path: Path, metrics: Path, plot: Path) -> dict[str, float]:
    """Evaluate a saved model on the snapshot's validation split: metrics JSON and the task type's
    first figure (the confusion matrix for classification)."""
    task = task_type_of(config)
    model = torch.load(model_path, weights_only=False, pickle_module=compat)
    data = task.datamodule(snapshot, training_rows(read_manifest(snapshot)), model.labels, model.image_size, 1, augment=False)
    data.setup()
    scores = task.evaluate(model, data.val_set, model.labels)
    values = {**scores.metrics, "val_images": len(data.val_set)}
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps(values, indent=2))
    next(iter(task.figures(scores, model.labels, "validation").values())).savefig(plot)
    return values
