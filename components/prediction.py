"""Batch inference of a model on tasks' images -> Label Studio predictions with a score."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from components.conversions import Prediction
from components.training import InferenceModel, load_images


def predict_images(
    model: InferenceModel,
    images: Mapping[int, Path],
    batch_size: int,
    progress: Callable[[Iterable[int]], Iterable[int]] = lambda it: it,
) -> list[Prediction]:
    """Predict the class of each task's image.

    Args:
        model: Outputs probabilities over `model.labels`.
        images: Task id -> image file. Tasks whose file is missing are left out (and reported by
            the caller), never guessed.
        batch_size: Images per forward pass.
        progress: Wraps the iteration over batches.

    Returns:
        One prediction per task with a readable image; score = the top class's probability.
    """
    readable = [(task_id, path) for task_id, path in images.items() if Path(path).is_file()]
    predictions: list[Prediction] = []
    model.eval()
    starts = range(0, len(readable), batch_size)
    with torch.no_grad():
        for start in progress(starts):
            chunk = readable[start : start + batch_size]
            probabilities = model(load_images([path for _, path in chunk], model.image_size))
            scores, classes = probabilities.max(dim=1)
            predictions.extend(
                Prediction(task_id=task_id, label=model.labels[int(c)], score=round(float(s), 4))
                for (task_id, _), s, c in zip(chunk, scores, classes, strict=True)
            )
    return predictions
