"""Batch inference of a model on tasks' images: class probabilities and embeddings per task."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from components.images import read_image
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
    images: Mapping[int, Path],
    batch_size: int,
    max_pixels: int,
    progress: Callable[[Iterable[int]], Iterable[int]] = lambda it: it,
) -> tuple[ModelOutputs, dict[int, str]]:
    """Run `model` over each task's image; an image that cannot be decoded is left out, never guessed.

    Args:
        model: Outputs probabilities over `model.labels`.
        images: Task id -> image file.
        batch_size: Images per forward pass.
        max_pixels: Images with more pixels are refused (params.yaml images.max_pixels).
        progress: Wraps the iteration over batches.

    Returns:
        The outputs for every readable image, and task id -> why its image was left out.
    """
    items = list(images.items())
    task_ids: list[int] = []
    problems: dict[int, str] = {}
    probabilities, embeddings = [], []
    model.eval()
    with torch.no_grad():
        for start in progress(range(0, len(items), batch_size)):
            decoded = []
            for task_id, path in items[start : start + batch_size]:
                try:
                    decoded.append(read_image(Path(path), model.image_size, max_pixels))
                    task_ids.append(task_id)
                except (OSError, ValueError) as e:
                    problems[task_id] = f"Task {task_id}: {e}. Replace the image in the task, or delete the task."
            if decoded:
                p, e = model.probabilities_and_embeddings(to_tensor(decoded, model.image_size))
                probabilities.append(p.numpy())
                embeddings.append(e.numpy())
    classes = len(model.labels)
    outputs = ModelOutputs(
        task_ids=tuple(task_ids),
        probabilities=np.concatenate(probabilities) if probabilities else np.empty((0, classes)),
        embeddings=np.concatenate(embeddings) if embeddings else np.empty((0, 0)),
        labels=tuple(model.labels),
    )
    return outputs, problems
