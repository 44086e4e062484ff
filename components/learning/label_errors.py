"""The label error finder: out-of-fold predictions from k-fold training, ranked by label quality.

Every labeled image of a snapshot is read by a model that never saw it (k-fold cross-validation
over the whole snapshot); the task type then scores every label's quality with cleanlab
(confident learning for classes, `cleanlab.object_detection` for boxes) and marks the suspects.
Nothing here touches Label Studio: the result is a table, written back as predictions elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from components.core.task_type import CrossValidation, TaskType
from components.networks.compute import CPU, Compute
from components.learning.training import Backbone, fit_steps

# `label` and `suggested` are targets (a class, or boxes as JSON); `quality` 0 = surely wrong, 1 = surely right
TABLE_COLUMNS = ["rank", "task_id", "label", "suggested", "quality", "suspected", "suggested_probability", "image"]


def find_label_errors(
    task_type: TaskType,
    snapshot_dir: Path,
    manifest: pd.DataFrame,
    labels: Sequence[str],
    architecture: str,
    architecture_options: dict[str, Any],
    *,
    folds: int,
    steps: int,
    image_size: int,
    batch_size: int,
    lr: float,
    augment: bool,
    seed: int,
    copy_paste: float = 0.0,
    compute: Compute = CPU,
    progress: Callable[[str], None] = lambda message: None,
    backbone: Backbone | None = None,
) -> tuple[pd.DataFrame, float]:
    """Rank every label of a snapshot (both splits) by how likely it is wrong (each fold's model starts
    from the pretrained `backbone` when there is one).

    Returns:
        The table (`TABLE_COLUMNS`, lowest quality first) and the out-of-fold score against the
        given labels (accuracy, or the share of images whose boxes all match).
    """

    def train_fold(rows: pd.DataFrame) -> nn.Module:
        return fit_steps(
            task_type, snapshot_dir, rows, labels, architecture, architecture_options, image_size=image_size,
            steps=steps, batch_size=batch_size, lr=lr, augment=augment, seed=seed, backbone=backbone,
            copy_paste=copy_paste, compute=compute,
        )

    table, score = task_type.find_label_errors(CrossValidation(snapshot_dir, manifest, labels, train_fold, folds, seed, progress))
    return table[TABLE_COLUMNS], score
