"""Which unlabeled tasks people should label next: uncertain ones, and not fifty near-duplicates.

Uncertainty comes from the task type (margin between the two likeliest classes, or how
borderline the likeliest boxes are). Among the `batch x candidates` most uncertain tasks, a batch
is picked greedily: each pick maximises uncertainty x distance (in the model's embedding space) to
everything already labeled or picked, a weighted k-center greedy. The rest follow in order of
uncertainty.
"""

from __future__ import annotations

import numpy as np


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def rank_for_labeling(
    uncertainty: np.ndarray,
    embeddings: np.ndarray,
    labeled_embeddings: np.ndarray,
    batch: int,
    candidates: int,
) -> np.ndarray:
    """The order in which to label the unlabeled tasks (row indices, first = label first).

    Args:
        uncertainty: (N,) the task type's uncertainty of each unlabeled task, in [0, 1].
        embeddings: (N, D) their embeddings.
        labeled_embeddings: (M, D) embeddings of the already labeled images (M may be 0).
        batch: How many to pick for diversity (the "Label next" view's size).
        candidates: The batch is picked among the `batch * candidates` most uncertain tasks.
    """
    by_uncertainty = np.argsort(-uncertainty, kind="stable")
    pool = by_uncertainty[: batch * candidates]
    if len(pool) == 0:
        return by_uncertainty
    points = _unit(embeddings[pool])
    if len(labeled_embeddings):
        centers = _unit(labeled_embeddings)
        distance = np.sqrt(np.maximum(((points[:, None, :] - centers[None, :, :]) ** 2).sum(-1), 0)).min(axis=1)
    else:
        distance = np.full(len(pool), 2.0)  # the largest distance between unit vectors
    picked: list[int] = []
    available = np.ones(len(pool), dtype=bool)
    for _ in range(min(batch, len(pool))):
        gain = np.where(available, (uncertainty[pool] + 1e-6) * distance, -np.inf)
        j = int(np.argmax(gain))
        picked.append(j)
        available[j] = False
        distance = np.minimum(distance, np.linalg.norm(points - points[j], axis=1))
    first = pool[picked]
    rest = by_uncertainty[~np.isin(by_uncertainty, first)]
    return np.concatenate([first, rest])
