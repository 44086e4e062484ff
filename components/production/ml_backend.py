"""Label Studio's ML backend protocol, as its 1.23 server speaks it: the one module that owns it.

What the server sends and expects (read from label-studio 1.23.2's `ml/api_connector.py` and
`ml/models.py`, and from label-studio-ml-backend's `label_studio_ml/api.py`, which this matches):

- `GET /health` -> any JSON with a 2xx (1 s read timeout): `{"status": "UP", "model_class": ...}`.
- `POST /setup` <- `{project: "<id>.<created>", schema, hostname, access_token, extra_params}` -> `{"model_version": ...}`
  (3 s: nothing is loaded in it).
- `POST /predict` <- `{tasks: [...], project, label_config, params: {login, password, context}}` -> `{"results": [...]}`,
  one `{"result": [regions], "score", "model_version"}` per task, in order. `context` is None for the Data
  Manager's "Retrieve predictions" (and when a task without predictions is opened); for a smart tool it is
  `{"result": [...]}`: the smart regions the person drew (rectangles, or keypoints with `is_positive`), in
  percent of the image, all of one type and label.
- `POST /webhook` <- project events and `START_TRAINING`: acknowledged (the loop learns of labels by its own webhook).

Everything here is pure: parsing, validating (a 4xx `BadRequest` whose message says what to send) and
building answers. Serving it is `flows/ml_backend.py`'s job; the models answering are the champion
(batch) and the mask assistant (smart tools).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from components.core.labeling_config import LabelingConfig

SMART_TYPES = ("rectanglelabels", "keypointlabels")


class BadRequest(ValueError):
    """A request Label Studio (or anyone) sent that cannot be answered: the status and what to send instead."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class PredictRequest:
    """One `/predict` call.

    Attributes:
        tasks: The tasks, as Label Studio serialized them (`id`, `data`, ...).
        project_id: The project they belong to (from `"<id>.<created>"`), None when not sent.
        context: The smart regions drawn (None: a batch call).
    """

    tasks: tuple[Mapping[str, Any], ...]
    project_id: int | None
    context: Mapping[str, Any] | None


@dataclass(frozen=True)
class Prompt:
    """What a person drew with a smart tool, in the image's pixels.

    Attributes:
        label: The class they chose (the label of the smart tool's region).
        box: (x1, y1, x2, y2), or None when they only clicked.
        positive: Points on the object (x, y).
        negative: Points off it (Alt-click).
        width, height: The image's size as Label Studio shows it.
    """

    label: str
    box: tuple[float, float, float, float] | None
    positive: tuple[tuple[float, float], ...]
    negative: tuple[tuple[float, float], ...]
    width: int
    height: int


def health(model_version: str | None) -> dict[str, Any]:
    """`/health`'s answer."""
    return {"status": "UP", "model_class": "flywheel", "model_version": model_version}


def setup(model_version: str | None) -> dict[str, Any]:
    """`/setup`'s answer: the version Label Studio files this backend's predictions under."""
    return {"model_version": model_version or "flywheel (no model yet)"}


def project_id_of(project: Any) -> int | None:
    """`"<id>.<created timestamp>"` (or a bare id) -> the id; None when absent."""
    if project is None or project == "":
        return None
    head = str(project).split(".", 1)[0]
    if not (head.isascii() and head.isdigit()):
        raise BadRequest(f"'project' is {project!r}; Label Studio sends '<project id>.<created timestamp>', e.g. '3.1727172000'.")
    return int(head)


def parse_predict(body: Any) -> PredictRequest:
    """A `/predict` body, checked.

    Raises:
        BadRequest: Not a JSON object, no `tasks` list of objects each with an `id` and `data`, or a
            `params.context` that is not an object with a `result` list.
    """
    if not isinstance(body, Mapping):
        raise BadRequest('The body must be a JSON object: {"tasks": [{"id": 1, "data": {...}}], "params": {"context": null}}.')
    tasks = body.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise BadRequest("'tasks' must be a non-empty list of tasks, each {'id': <task id>, 'data': {<image field>: <url>}}.")
    for task in tasks:
        if not isinstance(task, Mapping) or not isinstance(task.get("id"), int) or not isinstance(task.get("data"), Mapping):
            raise BadRequest(f"Each task needs an integer 'id' and a 'data' object; got {str(task)[:120]}.")
    params = body.get("params") or {}
    if not isinstance(params, Mapping):
        raise BadRequest("'params' must be an object, e.g. {'context': null}.")
    context = params.get("context")
    if context is not None and (not isinstance(context, Mapping) or not isinstance(context.get("result"), list)):
        raise BadRequest("'params.context' must be null (a batch call) or {'result': [<the smart regions drawn>]}.")
    if context is not None and len(tasks) != 1:
        raise BadRequest(f"A smart tool's call is about one task; this one names {len(tasks)}.")
    return PredictRequest(tuple(tasks), project_id_of(body.get("project")), context)


def prompt_of(context: Mapping[str, Any], config: LabelingConfig) -> Prompt:
    """The smart regions of a call -> one prompt in pixels.

    Raises:
        BadRequest: No region of a smart type, a label the config lacks, a size that is missing, a box
            or point outside the image.
    """
    regions = [r for r in context.get("result", []) if isinstance(r, Mapping) and r.get("type") in SMART_TYPES]
    if not regions:
        raise BadRequest(f"'context.result' holds no smart region: draw a smart rectangle or keypoints ({', '.join(SMART_TYPES)}).")
    label = None
    box = None
    positive: list[tuple[float, float]] = []
    negative: list[tuple[float, float]] = []
    width = height = 0
    for region in regions:
        value = region.get("value")
        try:
            width, height = int(region["original_width"]), int(region["original_height"])
            names = value[region["type"]]
            x, y = float(value["x"]), float(value["y"])
            if not isinstance(names, list) or not np.isfinite([x, y]).all():
                raise ValueError(f"value.{region['type']} must be a list of one label, value.x and value.y finite numbers")
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise BadRequest(f"A smart region needs original_width, original_height and value.x, value.y and value.{region.get('type')} "
                             f"(the label); missing or not a number: {e}.") from e
        if width <= 0 or height <= 0:
            raise BadRequest(f"original_width and original_height must be positive, not {width}x{height}.")
        if not names or names[0] not in config.labels:
            raise BadRequest(f"The label {names[0] if names else None!r} is not one of the project's labels {list(config.labels)}.")
        label = label or names[0]
        if region["type"] == "rectanglelabels":
            try:
                w, h = float(value["width"]), float(value["height"])
                if not np.isfinite([w, h]).all():
                    raise ValueError("not finite")
            except (KeyError, TypeError, ValueError) as e:
                raise BadRequest("A smart rectangle needs value.width and value.height (percent).") from e
            if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > 100.5 or y + h > 100.5:
                raise BadRequest(f"The rectangle (x {x:g}, y {y:g}, width {w:g}, height {h:g} percent) is not inside the image.")
            box = (x * width / 100, y * height / 100, min(x + w, 100) * width / 100, min(y + h, 100) * height / 100)
        else:
            if not (0 <= x <= 100 and 0 <= y <= 100):
                raise BadRequest(f"The keypoint ({x:g}%, {y:g}%) is not inside the image.")
            point = (x * width / 100, y * height / 100)
            (positive if region.get("is_positive", True) else negative).append(point)
    return Prompt(str(label), box, tuple(positive), tuple(negative), width, height)


def brush_region(mask: np.ndarray, label: str, config: LabelingConfig, score: float) -> dict[str, Any]:
    """A mask (height, width) as the brush region Label Studio shows: the config's brush control and image."""
    from components.data.masks import brush_of

    height, width = mask.shape
    return {
        "from_name": config.from_name, "to_name": config.to_name, "type": "brushlabels",
        "original_width": int(width), "original_height": int(height), "image_rotation": 0,
        "value": {"format": "rle", "rle": brush_of(mask), "brushlabels": [label]},
        "score": round(float(score), 4), "readonly": False,
    }


def polygon_region(mask: np.ndarray, label: str, config: LabelingConfig, score: float) -> dict[str, Any]:
    """A mask (height, width) as the polygon region Label Studio shows: its outline, in percent."""
    from components.data.masks import points_in_percent, polygon_of

    height, width = mask.shape
    return {
        "from_name": config.from_name, "to_name": config.to_name, "type": "polygonlabels",
        "original_width": int(width), "original_height": int(height), "image_rotation": 0,
        "value": {"points": points_in_percent(polygon_of(mask), width, height), "closed": True, "polygonlabels": [label]},
        "score": round(float(score), 4), "readonly": False,
    }


def answers(results: Sequence[tuple[Sequence[Mapping[str, Any]], float]], model_version: str) -> dict[str, Any]:
    """`/predict`'s answer: one prediction per task, in the order asked."""
    return {"results": [{"result": list(result), "score": round(float(score), 4), "model_version": model_version}
                        for result, score in results]}
