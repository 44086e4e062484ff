"""Batch inference of a model on tasks' images: class probabilities and embeddings per task."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from components.training import InferenceModel, to_tensor


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
    images: Mapping[int, np.ndarray],
    batch_size: int,
    progress: Callable[[Iterable[int]], Iterable[int]] = lambda it: it,
) -> ModelOutputs:
    """Run `model` over each task's decoded image (`images.ImageStore.check`, at `model.image_size`).

    Args:
        model: Outputs probabilities over `model.labels`.
        images: Task id -> its image as (S, S, 3) uint8.
        batch_size: Images per forward pass.
        progress: Wraps the iteration over batches.
    """
    items = list(images.items())
    probabilities, embeddings = [], []
    model.eval()
    with torch.no_grad():
        for start in progress(range(0, len(items), batch_size)):
            chunk = [array for _, array in items[start : start + batch_size]]
            p, e = model.probabilities_and_embeddings(to_tensor(chunk, model.image_size))
            probabilities.append(p.numpy())
            embeddings.append(e.numpy())
    classes = len(model.labels)
    return ModelOutputs(
        task_ids=tuple(task_id for task_id, _ in items),
        probabilities=np.concatenate(probabilities) if probabilities else np.empty((0, classes)),
        embeddings=np.concatenate(embeddings) if embeddings else np.empty((0, 0)),
        labels=tuple(model.labels),
    )
