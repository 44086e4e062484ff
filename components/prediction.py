"""Batch inference of a model on tasks' images: class probabilities and embeddings per task."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from components.training import InferenceModel, load_images


@dataclass(frozen=True)
class ModelOutputs:
    """What a model says about a set of tasks, row i belonging to `task_ids[i]`.

    Attributes:
        task_ids: The tasks whose image could be read, in order.
        probabilities: (N, classes) softmax outputs.
        embeddings: (N, D) penultimate features.
        labels: The class names, column j of `probabilities` being `labels[j]`.
    """

    task_ids: tuple[int, ...]
    probabilities: np.ndarray
    embeddings: np.ndarray
    labels: tuple[str, ...]

    @property
    def predicted(self) -> list[str]:
        """The top class of each task."""
        return [self.labels[int(j)] for j in self.probabilities.argmax(axis=1)] if len(self.task_ids) else []


def infer_images(
    model: InferenceModel,
    images: Mapping[int, Path],
    batch_size: int,
    progress: Callable[[Iterable[int]], Iterable[int]] = lambda it: it,
) -> ModelOutputs:
    """Run `model` over each task's image.

    Args:
        model: Outputs probabilities over `model.labels`.
        images: Task id -> image file. Tasks whose file is missing are left out (and reported by
            the caller), never guessed.
        batch_size: Images per forward pass.
        progress: Wraps the iteration over batches.
    """
    readable = [(task_id, path) for task_id, path in images.items() if Path(path).is_file()]
    probabilities, embeddings = [], []
    model.eval()
    with torch.no_grad():
        for start in progress(range(0, len(readable), batch_size)):
            chunk = readable[start : start + batch_size]
            p, e = model.probabilities_and_embeddings(load_images([path for _, path in chunk], model.image_size))
            probabilities.append(p.numpy())
            embeddings.append(e.numpy())
    classes = len(model.labels)
    return ModelOutputs(
        task_ids=tuple(task_id for task_id, _ in readable),
        probabilities=np.concatenate(probabilities) if probabilities else np.empty((0, classes)),
        embeddings=np.concatenate(embeddings) if embeddings else np.empty((0, 0)),
        labels=tuple(model.labels),
    )
