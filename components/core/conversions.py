"""Pure converters between Label Studio's JSON and flywheel's records. No network, no SDK.

Label Studio task JSON -> `LabeledTask`, and a model's suggestion -> an item of Label Studio's bulk
prediction import. What a result *means* (a class, boxes) is a task type's business
(`components/tasks/`), not this module's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


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
        lead_time: Seconds the person spent on it, as Label Studio measured (None when it did not).
    """

    id: int
    result: tuple[Mapping[str, Any], ...]
    annotator: str
    updated_at: datetime
    was_cancelled: bool = False
    parent_prediction: int | None = None
    lead_time: float | None = None


@dataclass(frozen=True)
class LabeledTask:
    """A task and its current annotations (none when its last annotation was deleted)."""

    id: int
    data: Mapping[str, Any]
    annotations: tuple[Annotation, ...]
    updated_at: datetime


@dataclass(frozen=True)
class Prediction:
    """A model's suggestion for one task, as a Label Studio result.

    Attributes:
        task_id: The task.
        result: The suggestion's regions (a task type builds them; each may carry its own score).
        score: The model's confidence in the whole suggestion: what a person sees beside it.
    """

    task_id: int
    result: tuple[Mapping[str, Any], ...]
    score: float


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
            lead_time=float(a["lead_time"]) if isinstance(a.get("lead_time"), int | float) else None,
        )
        for a in raw.get("annotations") or ()
    )
    return LabeledTask(
        id=int(raw["id"]),
        data=dict(raw.get("data") or {}),
        annotations=annotations,
        updated_at=parse_timestamp(raw["updated_at"]),
    )


def current_annotation(task: LabeledTask) -> Annotation | None:
    """The annotation that counts for training: the latest one that was not a skip."""
    done = [a for a in task.annotations if not a.was_cancelled]
    return max(done, key=lambda a: (a.updated_at, a.id)) if done else None


def prediction_to_ls(prediction: Prediction, model_version: str) -> dict[str, Any]:
    """A model's suggestion -> one item of Label Studio's bulk prediction import."""
    return {
        "task": prediction.task_id,
        "model_version": model_version,
        "score": float(prediction.score),
        "result": [dict(region) for region in prediction.result],
    }
