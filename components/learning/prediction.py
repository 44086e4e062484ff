"""Batch inference of a model on tasks' images: what it says about each task, and embeddings."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from components.core.labeling_config import LabelingConfig
from components.core.task_type import Reading, TaskType
from components.networks.preprocessing import to_tensor


@dataclass(frozen=True)
class ModelOutputs:
    """What a model says about a set of tasks, item i belonging to `task_ids[i]`.

    Attributes:
        task_ids: The tasks whose image could be read, in order.
        readings: The task type's reading of each (answer, Label Studio result, confidence, uncertainty).
        embeddings: (N, D) features, what selection measures "near" with.
    """

    task_ids: tuple[int, ...]
    readings: tuple[Reading, ...]
    embeddings: np.ndarray

    @property
    def uncertainty(self) -> np.ndarray:
        return np.array([r.uncertainty for r in self.readings], dtype=float)


def infer_images(
    task_type: TaskType,
    model: nn.Module,
    images: Mapping[int, np.ndarray],
    config: LabelingConfig,
    batch_size: int,
    progress: Callable[[Iterable[int]], Iterable[int]] = lambda it: it,
    sizes: Mapping[int, tuple[int, int]] | None = None,
) -> ModelOutputs:
    """Run `model` over each task's decoded image (`images.ImageStore.check`, at `model.image_size`).

    Args:
        task_type: Reads the model's output.
        model: An inference model of that task type.
        images: Task id -> its image as (S, S, 3) uint8.
        config: The labeling config (tag names of the results).
        batch_size: Images per forward pass.
        progress: Wraps the iteration over batches.
        sizes: Task id -> the original image's (width, height), for answers drawn at that size.
    """
    items = list(images.items())
    readings: list[Reading] = []
    embeddings = []
    model.eval()
    with torch.no_grad():
        for start in progress(range(0, len(items), batch_size)):
            block = items[start : start + batch_size]
            chunk_sizes = [sizes[task_id] for task_id, _ in block] if sizes is not None else None
            read, embedded = task_type.read(model, to_tensor([array for _, array in block], model.image_size), config, chunk_sizes)
            readings.extend(read)
            embeddings.append(embedded)
    return ModelOutputs(
        task_ids=tuple(task_id for task_id, _ in items),
        readings=tuple(readings),
        embeddings=np.concatenate(embeddings) if embeddings else np.empty((0, 0)),
    )


def embed(task_type: TaskType, model: nn.Module, images: torch.Tensor, config: LabelingConfig, batch_size: int = 512) -> np.ndarray:
    """(N, D) embeddings of images already as a tensor (a snapshot's, `training.load_images`)."""
    if not len(images):
        return np.empty((0, 0))
    model.eval()
    return np.concatenate([task_type.read(model, chunk, config)[1] for chunk in images.split(batch_size)])
