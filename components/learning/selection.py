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


def rank_typical(embeddings: np.ndarray, labeled_embeddings: np.ndarray, batch: int, seed: int = 0, neighbors: int = 20) -> np.ndarray:
    """The order in which to label while the model is not trusted yet (cold start): typical images of
    the clusters nobody has labeled yet, TypiClust-style (Hacohen et al., ICML 2022), on
    self-supervised embeddings. Uncertainty means little before a model is any good; an image that
    looks like many others, from a part of the pool no label covers, teaches the most.

    The pool (labeled and unlabeled) is cut into `len(labeled) + batch` clusters (k-means); each pick
    goes to the cluster with the fewest labeled or picked images (the larger first), and takes its
    most typical unlabeled image (the smallest mean distance to its `neighbors` nearest images). The
    rest follow, most typical first.

    Args:
        embeddings: (N, D) embeddings of the unlabeled tasks.
        labeled_embeddings: (M, D) of the labeled images (M may be 0).
        batch: How many to pick cluster by cluster.
        seed: For k-means.
        neighbors: Neighbours that measure how typical an image is.

    Returns:
        Row indices into `embeddings`, first = label first.
    """
    from sklearn.cluster import KMeans
    from sklearn.neighbors import NearestNeighbors

    count = len(embeddings)
    if count == 0:
        return np.arange(0)
    points = _unit(embeddings)
    labeled = _unit(labeled_embeddings) if len(labeled_embeddings) else np.empty((0, points.shape[1]))
    everything = np.concatenate([labeled, points])
    k = min(len(labeled) + batch, len(everything))
    cluster = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(everything)
    distances, _ = NearestNeighbors(n_neighbors=min(neighbors + 1, len(points))).fit(points).kneighbors(points)
    typicality = 1.0 / (distances[:, 1:].mean(axis=1) + 1e-8) if distances.shape[1] > 1 else np.ones(count)
    covered = np.bincount(cluster[: len(labeled)], minlength=k).astype(float)
    size = np.bincount(cluster, minlength=k)
    of_point = cluster[len(labeled):]
    by_typicality = np.argsort(-typicality, kind="stable")
    picked: list[int] = []
    taken = np.zeros(count, dtype=bool)
    for _ in range(min(batch, count)):
        open_clusters = np.unique(of_point[~taken])
        target = open_clusters[np.lexsort((-size[open_clusters], covered[open_clusters]))[0]]
        j = next(int(i) for i in by_typicality if of_point[i] == target and not taken[i])
        picked.append(j)
        taken[j] = True
        covered[target] += 1
    rest = [int(i) for i in by_typicality if not taken[i]]
    return np.array(picked + rest, dtype=int)
