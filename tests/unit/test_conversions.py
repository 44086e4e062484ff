import json
from datetime import UTC, datetime

import pytest

from components.core.conversions import (
    Prediction,
    current_annotation,
    format_cursor,
    parse_timestamp,
    prediction_to_ls,
    task_from_json,
)
from components.tasks.classification import choice_result, label_of
from components.core.errors import AnnotationError
from tests.conftest import FIXTURES

pytestmark = pytest.mark.unit


@pytest.fixture
def tasks():
    return [task_from_json(t) for t in json.loads((FIXTURES / "tasks.json").read_text())]


def test_task_from_export_json(tasks):
    first = tasks[0]
    assert first.id == 1 and first.data["sha256"] == "ab12"
    assert [a.id for a in first.annotations] == [1, 4, 5]
    assert first.annotations[0].annotator == "a@b.c"
    assert first.annotations[1].parent_prediction == 7
    assert first.annotations[2].was_cancelled
    assert first.updated_at == datetime(2026, 11, 25, 6, 1, 36, 504762, tzinfo=UTC)


def test_the_latest_non_skipped_annotation_counts(tasks, classification_config):
    current = current_annotation(tasks[0])
    assert current is not None and current.id == 4
    assert label_of(current, classification_config, tasks[0].id) == "5"
    assert current_annotation(tasks[1]) is None  # its annotations were deleted


def test_unknown_label_names_the_task(tasks, classification_config):
    with pytest.raises(AnnotationError, match=r"Task 3: .*'cat'.*not in the labeling config") as e:
        label_of(tasks[2].annotations[0], classification_config, tasks[2].id)
    assert e.value.task_ids == [3]


def test_empty_result_names_the_task(tasks, classification_config):
    with pytest.raises(AnnotationError, match=r"Task 1: .*empty result"):
        label_of(tasks[0].annotations[2], classification_config, 1)


def test_two_labels_in_single_label_task(tasks, classification_config):
    annotation = tasks[0].annotations[0]
    two = [{**annotation.result[0], "value": {"choices": ["1", "2"]}}]
    with pytest.raises(AnnotationError, match="single-label"):
        label_of(type(annotation)(**{**annotation.__dict__, "result": tuple(two)}), classification_config, 1)


def test_prediction_carries_model_version_and_score(classification_config):
    item = prediction_to_ls(Prediction(task_id=7, result=tuple(choice_result("4", classification_config)), score=0.93), "m-3")
    assert item == {"task": 7, "model_version": "m-3", "score": 0.93, "result": choice_result("4", classification_config)}
    assert item["result"][0]["value"] == {"choices": ["4"]}
    assert (item["result"][0]["from_name"], item["result"][0]["to_name"]) == ("label", "image")


@pytest.mark.parametrize(
    "text",
    ["2026-11-25T06:01:36.504762Z", "2026-11-25T06:01:36.504762+00:00", "2026-11-25T07:01:36.504762+01:00"],
)
def test_cursor_round_trip(text):
    assert format_cursor(parse_timestamp(text)) == "2026-11-25T06:01:36.504762Z"
