"""The label error finder: out-of-fold probabilities from k-fold training, ranked by cleanlab.

Every labeled image of a snapshot gets class probabilities from a model that never saw it (k-fold
cross-validation over the whole snapshot); cleanlab's confident learning then estimates how many
labels are wrong (`num_label_issues`) and scores every label's quality (`get_label_quality_scores`);
the lowest-quality labels, that many, are the suspects.
Nothing here touches Label Studio: the result is a table, written back as predictions elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from cleanlab.count import num_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.model_selection import StratifiedKFold

from components.training import fit_steps, load_images

log = logging.getLogger(__name__)

TABLE_COLUMNS = ["rank", "task_id", "label", "suggested", "quality", "suspected", "suggested_probability", "image"]


def out_of_fold_probabilities(
    images: torch.Tensor,
    targets: torch.Tensor,
    labels: Sequence[str],
    folds: int,
    train_fold: Callable[[torch.Tensor, torch.Tensor], Any],
    seed: int = 0,
    progress: Callable[[str], None] = lambda message: None,
) -> np.ndarray:
    """(N, classes) probabilities, row i from a model trained on the folds that do not hold image i.

    Args:
        images, targets: The labeled set.
        labels: Class names.
        folds: k. Lowered to the smallest class's size (at least 2) so every fold sees every class.
        train_fold: (images, targets) -> a model returning probabilities.
        seed: Fold assignment.
        progress: Told "fold i/k" as each fold starts.
    """
    counts = np.bincount(targets.numpy(), minlength=len(labels))
    k = max(2, min(folds, int(counts[counts > 0].min())))
    if k < folds:
        log.warning("Cross-validating with %d folds instead of %d: a class has only %d labels.", k, folds, k)
    probabilities = np.zeros((len(targets), len(labels)), dtype=np.float64)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for i, (fit_rows, held_rows) in enumerate(splitter.split(np.zeros(len(targets)), targets.numpy()), start=1):
        progress(f"fold {i}/{k}")
        model = train_fold(images[fit_rows], targets[fit_rows])
        with torch.no_grad():
            probabilities[held_rows] = model(images[held_rows]).double().numpy()
    return probabilities


def rank_label_errors(
    manifest: pd.DataFrame, probabilities: np.ndarray, labels: Sequence[str]
) -> pd.DataFrame:
    """Every labeled row with its label quality, lowest (most suspect) first.

    Returns:
        Columns `TABLE_COLUMNS`: `quality` is cleanlab's self-confidence label quality score
        (0 = surely wrong, 1 = surely right), `suggested` the out-of-fold model's top class, and
        `suspected` marks the lowest-quality labels, as many as cleanlab estimates are wrong
        (`num_label_issues`, confident learning) and whose suggested class differs from the label:
        cleanlab's recommended "count, then rank" use, so the suspects are exactly the top of the
        ranking.
    """
    given = np.array([list(labels).index(label) for label in manifest["label"]])
    quality = get_label_quality_scores(given, probabilities, method="self_confidence")
    count = num_label_issues(given, probabilities) if len(given) else 0
    lowest = np.zeros(len(given), dtype=bool)
    lowest[np.argsort(quality, kind="stable")[:count]] = True
    issues = lowest & (probabilities.argmax(axis=1) != given)
    table = pd.DataFrame(
        {
            "task_id": manifest["task_id"].to_numpy(),
            "label": manifest["label"].to_numpy(),
            "suggested": [labels[j] for j in probabilities.argmax(axis=1)],
            "quality": quality.round(4),
            "suspected": issues,
            "suggested_probability": probabilities.max(axis=1).round(4),
            "image": manifest["image"].to_numpy(),
        }
    )
    table = table.sort_values(["quality", "task_id"], kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table[TABLE_COLUMNS]


def find_label_errors(
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
    progress: Callable[[str], None] = lambda message: None,
) -> tuple[pd.DataFrame, float]:
    """Rank every label of a snapshot (both splits) by how likely it is wrong.

    Returns:
        The table of `rank_label_errors` and the out-of-fold accuracy against the given labels.
    """
    images = load_images([Path(snapshot_dir) / p for p in manifest["image"]], image_size)
    targets = torch.tensor([list(labels).index(label) for label in manifest["label"]], dtype=torch.long)

    def train_fold(fold_images: torch.Tensor, fold_targets: torch.Tensor) -> Any:
        return fit_steps(
            fold_images, fold_targets, labels, architecture, architecture_options,
            steps=steps, batch_size=batch_size, lr=lr, augment=augment, seed=seed,
        )

    probabilities = out_of_fold_probabilities(images, targets, labels, folds, train_fold, seed, progress)
    accuracy = float((probabilities.argmax(axis=1) == targets.numpy()).mean()) if len(targets) else 0.0
    return rank_label_errors(manifest.reset_index(drop=True), probabilities, labels), accuracy
