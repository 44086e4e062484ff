"""Task types, one module each: what differs between classification, detection and segmentation.

A project's task type follows from its labeling config's control tag (`<Choices>` ->
classification, `<RectangleLabels>` -> detection, `<BrushLabels>` or `<PolygonLabels>` ->
segmentation); `task_type_of(config)` returns it. The rest of
the loop calls `TaskType` (`components/core/task_type.py`) and never branches on the task type.
"""

from __future__ import annotations

from components.core.labeling_config import LabelingConfig
from components.core.task_type import Reading, Scores, TaskType


def task_type_of(config: LabelingConfig) -> TaskType:
    """The task type of a parsed labeling config."""
    return task_type_named(config.task)


def task_type_named(name: str) -> TaskType:
    """A task type by its name: "classification", "detection" or "segmentation" (imported lazily:
    each pulls its own libraries)."""
    if name == "segmentation":
        from components.tasks.segmentation import Segmentation

        return Segmentation()
    if name == "detection":
        from components.tasks.detection import Detection

        return Detection()
    from components.tasks.classification import Classification

    return Classification()


__all__ = ["Reading", "Scores", "TaskType", "task_type_named", "task_type_of"]
