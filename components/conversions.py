"""Pure converters between Label Studio's JSON and flywheel's records. No network, no SDK.

Label Studio task JSON -> `LabeledTask` (with each annotation's label), and a model's output ->
a Label Studio prediction. Tag names and the label set always come from a `LabelingConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from components.errors import AnnotationError
from components.labeling_config import LabelingConfig

CURSOR_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass(frozen=True)
class Annotation:
    """One person's annotation of a task, as Label Studio holds it.

    Attributes:
        id: Label Studio's annotation id.
        result: The raw result list (kept as is: flywheel never rewrites it).
        annotator: Who made it (email or user id as text).
        updated_at: When it was last saved (UTC).
        was_cancelled: True when the person skipped the task instead of labeling it.
        parent_prediction: Id of the prediction it started from, when it came from a suggestion.
    """

    id: int
    result: tuple[Mapping[str, Any], ...]
    annotator: str
    updated_at: datetime
    was_cancelled: bool = False
    parent_prediction: int | None = None


@dataclass(frozen=True)
class LabeledTask:
    """A task and its current annotations (none when its last annotation was deleted)."""

    id: int
    data: Mapping[str, Any]
    annotations: tuple[Annotation, ...]
    updated_at: datetime


@dataclass(frozen=True)
class Prediction:
    """A model's suggestion for one task.

    Attributes:
        task_id: The task.
        label: The suggested class.
        score: What Label Studio sorts by: on an unlabeled task the label-next priority, on a
            suspected label error how suspect it is.
        region_id: Written as the result item's `id`; marks a kind of prediction so a Data
            Manager filter on prediction results can find it.
    """

    task_id: int
    label: str
    score: float
    region_id: str | None = None


def parse_timestamp(value: str) -> datetime:
    """Label Studio's ISO timestamps ("...Z" or "+00:00") -> an aware UTC datetime."""
    parsed = datetime.fromisoformat(value)
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_cursor(moment: datetime) -> str:
    """A UTC datetime -> the text form the Data Manager's Datetime filter takes."""
    return moment.astimezone(UTC).strftime(CURSOR_FORMAT)


def _annotator(raw: Mapping[str, Any]) -> str:
    # Label Studio renders the creator as " email, user_id"; keep the email part
    who = str(raw.get("created_username") or "").split(",")[0].strip()
    return who or str(raw.get("completed_by") or "")


def task_from_json(raw: Mapping[str, Any]) -> LabeledTask:
    """One task as Label Studio returns it with `fields="all"` -> a `LabeledTask`."""
    annotations = tuple(
        Annotation(
            id=int(a["id"]),
            result=tuple(a.get("result") or ()),
            annotator=_annotator(a),
            updated_at=parse_timestamp(a.get("updated_at") or a["created_at"]),
            was_cancelled=bool(a.get("was_cancelled")),
            parent_prediction=a.get("parent_prediction"),
        )
        for a in raw.get("annotations") or ()
    )
    return LabeledTask(
        id=int(raw["id"]),
        data=dict(raw.get("data") or {}),
        annotations=annotations,
        updated_at=parse_timestamp(raw["updated_at"]),
    )


def label_of(annotation: Annotation, config: LabelingConfig, task_id: int) -> str:
    """The single class an annotation chose.

    Raises:
        AnnotationError: The result is empty, has no choice for the config's control tag, picks more
            than one class, or picks a class the config does not know. The message names the task.
    """
    choices = [
        r.get("value", {}).get(config.result_type, [])
        for r in annotation.result
        if isinstance(r, Mapping) and r.get("from_name") == config.from_name and isinstance(r.get("value"), Mapping)
    ]
    picked = [c for chosen in choices if isinstance(chosen, list) for c in chosen]
    if not picked:
        raise AnnotationError(
            f"Task {task_id}: annotation {annotation.id} by {annotation.annotator or 'unknown'} has no "
            f"'{config.from_name}' choice (empty result). Open the task in Label Studio and pick a label, "
            "or skip the task.",
            [task_id],
        )
    if len(picked) > 1:
        raise AnnotationError(
            f"Task {task_id}: annotation {annotation.id} picks {picked}, but this is single-label "
            "classification. Keep one label in Label Studio.",
            [task_id],
        )
    if picked[0] not in config.labels:
        raise AnnotationError(
            f"Task {task_id}: annotation {annotation.id} uses label {picked[0]!r}, which is not in the "
            f"labeling config {list(config.labels)}. Fix the annotation, or add the label to the config.",
            [task_id],
        )
    return picked[0]


def current_annotation(task: LabeledTask) -> Annotation | None:
    """The annotation that counts for training: the latest one that was not a skip."""
    done = [a for a in task.annotations if not a.was_cancelled]
    return max(done, key=lambda a: (a.updated_at, a.id)) if done else None


def prediction_to_ls(prediction: Prediction, config: LabelingConfig, model_version: str) -> dict[str, Any]:
    """A model's suggestion -> one item of Label Studio's bulk prediction import."""
    result = choice_result(prediction.label, config)
    if prediction.region_id:
        result[0]["id"] = prediction.region_id
    return {"task": prediction.task_id, "model_version": model_version, "score": float(prediction.score), "result": result}


def predicted_label(prediction: Mapping[str, Any], config: LabelingConfig) -> str | None:
    """The class a Label Studio prediction (JSON) suggests, or None when it holds no single choice."""
    picked = [
        c
        for r in prediction.get("result") or ()
        if r.get("from_name") == config.from_name
        for c in r.get("value", {}).get(config.result_type, [])
    ]
    return picked[0] if len(picked) == 1 else None


def choice_result(label: str, config: LabelingConfig) -> list[dict[str, Any]]:
    """The result of picking `label`: what a person's annotation or a model's prediction holds."""
    return [
        {
            "from_name": config.from_name,
            "to_name": config.to_name,
            "type": config.result_type,
            "value": {config.result_type: [label]},
        }
    ]
