"""Label Studio rectangles and boxes in pixels: percent and pixels are converted in exactly one place
(`box_from_value`, `value_from_box`), an annotation's boxes are checked there, and boxes are matched by IoU.

A rotated box, a box with zero area, one outside the image or with a label the config lacks is an
`AnnotationError` that names the task and the box.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from components.core.errors import AnnotationError
from components.core.labeling_config import LabelingConfig
from components.core.conversions import Annotation
from components.core.effort import Edits
from components.tasks.objects import edits_between, one_to_one, regions_of, single_label

MATCH_IOU = 0.5  # a suggested box agrees with a drawn one at IoU >= this, same class; and one box per object
NEAR_IOU = 0.3  # a suggested box overlapping a true one by less than MATCH_IOU but at least this is adjusted, not redrawn
EDGE_TOLERANCE = 1.0  # percent: a box overhanging the image by up to this is clipped, beyond it is an error


def box_from_value(value: Mapping[str, Any], width: int, height: int) -> tuple[float, float, float, float]:
    """A rectangle's value (percent of the image) -> (x, y, w, h) in pixels, top-left corner."""
    return (
        float(value["x"]) * width / 100.0,
        float(value["y"]) * height / 100.0,
        float(value["width"]) * width / 100.0,
        float(value["height"]) * height / 100.0,
    )


def value_from_box(x: float, y: float, w: float, h: float, width: int, height: int) -> dict[str, float]:
    """(x, y, w, h) in pixels -> a rectangle's value in percent of the image (unrotated)."""
    return {
        "x": 100.0 * x / width,
        "y": 100.0 * y / height,
        "width": 100.0 * w / width,
        "height": 100.0 * h / height,
        "rotation": 0,
    }


def boxes_of(annotation: Annotation, config: LabelingConfig, task_id: int, width: int, height: int) -> list[dict[str, Any]]:
    """An annotation's boxes in pixels of a `width` x `height` image.

    Raises:
        AnnotationError: A box is rotated, has no area, lies outside the image, or has no single
            label of the config's; the message names the task and the box.
    """
    boxes = []
    for i, region in enumerate(regions_of(annotation.result, config), start=1):
        value = region["value"]
        where = f"Task {task_id}: annotation {annotation.id}, box {i}"
        label = single_label(value, config, where, task_id)
        try:
            x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
        except (KeyError, TypeError, ValueError):
            raise AnnotationError(f"{where} has no x/y/width/height; redraw it in Label Studio.", [task_id]) from None
        if abs(float(value.get("rotation") or 0)) > 1e-6:
            raise AnnotationError(
                f"{where} is rotated by {float(value['rotation']):g} degrees; flywheel trains axis-aligned boxes only, "
                "so this task is left out. Redraw the box unrotated in Label Studio.", [task_id],
            )
        if w <= 0 or h <= 0:
            raise AnnotationError(f"{where} has zero area ({w:g}% x {h:g}%); delete it or redraw it.", [task_id])
        t = EDGE_TOLERANCE
        if x < -t or y < -t or x + w > 100 + t or y + h > 100 + t:
            raise AnnotationError(
                f"{where} lies outside the image (x {x:.1f}%, y {y:.1f}%, {w:.1f}% x {h:.1f}%); move it inside "
                "the image in Label Studio.", [task_id],
            )
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, 100.0), min(y + h, 100.0)
        px, py, pw, ph = box_from_value({"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}, width, height)
        boxes.append({"label": label, "x": px, "y": py, "w": pw, "h": ph})
    return boxes


def percent_boxes(result: Sequence[Mapping[str, Any]], config: LabelingConfig) -> list[tuple[str, np.ndarray]] | None:
    """(label, xyxy in percent) of each unrotated single-label box of a result; None if one is not that."""
    boxes = []
    for region in regions_of(result, config):
        value = region["value"]
        picked = value.get(config.result_type) or []
        try:
            if len(picked) != 1 or abs(float(value.get("rotation") or 0)) > 1e-6:
                return None
            x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
        except (KeyError, TypeError, ValueError):
            return None
        boxes.append((picked[0], np.array([x, y, x + w, y + h])))
    return boxes


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def boxes_match(predicted: Sequence[tuple[str, np.ndarray]], truth: Sequence[tuple[str, np.ndarray]]) -> bool:
    """True when every true box has its own predicted box of the same class at IoU >= MATCH_IOU, and
    no predicted box is left over (nothing missing, nothing extra)."""
    return one_to_one(predicted, truth, iou, MATCH_IOU)


def box_edits(predicted: Sequence[tuple[str, np.ndarray]], truth: Sequence[tuple[str, np.ndarray]]) -> Edits:
    """Object by object, what a person does to the predicted boxes to get the true ones (kept at IoU >=
    MATCH_IOU with the same class; adjusted at IoU >= NEAR_IOU; the rest deleted or drawn)."""
    return edits_between(predicted, truth, iou, MATCH_IOU, NEAR_IOU)
