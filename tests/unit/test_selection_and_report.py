"""Pure parts of selection, the error ranking and the strategy report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.core.conversions import Prediction, prediction_to_ls
from components.adapters.label_studio import SUSPECT_MARK
from components.loop.publish import marked
from components.studies.report import (
    LearningPoint,
    build_report,
    fit_learning_curve,
    measure_acceptance,
)
from components.learning.selection import rank_for_labeling
from components.tasks.classification import Classification, choice_result, margin_uncertainty, rank_label_errors

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("probabilities", "expected"),
    [([0.5, 0.5, 0.0], 1.0), ([1.0, 0.0, 0.0], 0.0), ([0.6, 0.3, 0.1], 0.7)],
)
def test_margin_uncertainty(probabilities, expected):
    assert margin_uncertainty(np.array([probabilities]))[0] == pytest.approx(expected)


def test_a_batch_is_not_made_of_near_duplicates():
    # ten copies of one very uncertain image, and three distinct, slightly less uncertain ones
    probabilities = np.array([[0.5, 0.5]] * 10 + [[0.55, 0.45], [0.56, 0.44], [0.57, 0.43]])
    embeddings = np.array([[1.0, 0.0, 0.0, 0.0]] * 10 + [[0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    order = rank_for_labeling(margin_uncertainty(probabilities), embeddings, np.empty((0, 4)), batch=4, candidates=4)
    assert sorted(order.tolist()) == list(range(13))  # a full ordering
    first = order[:4].tolist()
    assert sum(i < 10 for i in first) == 1 and set(first) >= {10, 11, 12}


def test_what_is_labeled_already_pushes_its_neighbours_back():
    probabilities = np.array([[0.5, 0.5], [0.52, 0.48]])
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0]])
    order = rank_for_labeling(margin_uncertainty(probabilities), embeddings, np.array([[1.0, 0.0]]), batch=1, candidates=2)
    assert order.tolist() == [1, 0]


def test_rank_label_errors_puts_the_doubtful_label_first():
    manifest = pd.DataFrame({"task_id": [1, 2, 3, 4], "label": ["a", "b", "a", "b"], "image": ["1", "2", "3", "4"]})
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.05, 0.95], [0.1, 0.9]])
    table = rank_label_errors(manifest, probabilities, ["a", "b"])
    assert table.iloc[0]["task_id"] == 3 and table.iloc[0]["suggested"] == "b"
    assert list(table["rank"]) == [1, 2, 3, 4] and table["quality"].is_monotonic_increasing


def test_learning_curve_fit_estimates_labels_to_target():
    truth = lambda n: 0.95 - 2.0 * n ** -0.6
    points = [LearningPoint(n, truth(n), f"s{n}") for n in (50, 100, 200, 400)]
    fit = fit_learning_curve(points)
    assert fit is not None and fit.ceiling == pytest.approx(0.95, abs=0.02)
    needed = fit.labels_for(0.9)
    assert needed == pytest.approx((2.0 / 0.05) ** (1 / 0.6), rel=0.15)
    assert fit.labels_for(0.99) is None  # above the ceiling
    assert fit_learning_curve(points[:2]) is None


def test_acceptance_compares_each_annotation_with_its_parent_prediction(classification_config):
    def task(task_id: int, predicted: str, labeled: str, parent: int | None) -> dict:
        return {
            "id": task_id, "data": {}, "updated_at": "2026-01-01T00:00:00Z",
            "predictions": [{"id": 100 + task_id, "model_version": "m-v1", "result": choice_result(predicted, classification_config)}],
            "annotations": [{"id": task_id, "result": choice_result(labeled, classification_config), "created_at": "2026-01-01T00:00:00Z", "parent_prediction": parent}],
        }

    labels = classification_config.labels
    tasks = [task(1, labels[0], labels[0], 101), task(2, labels[0], labels[1], 102), task(3, labels[0], labels[0], None)]
    acceptance = measure_acceptance(tasks, classification_config, Classification())
    assert (acceptance.shown, acceptance.accepted, acceptance.rate) == (2, 1, 0.5)
    assert acceptance.by_model_version == {"m-v1": (2, 1)}


def test_report_names_weak_classes_and_confused_pairs():
    confusion = np.array([[8, 2, 0], [3, 5, 0], [0, 0, 10]])
    report = build_report([], ["a", "b", "c"], {"a": 10, "b": 8, "c": 10}, confusion,
                          measure_acceptance([], None, Classification()), target_accuracy=0.9)
    assert report.classes_needing_labels[0] == "b" and report.classes_needing_labels[-1] == "c"
    assert report.confused_pairs == (("a", "b", 5),)
    assert report.labels_to_target is None and report.acceptance.rate is None


def test_a_suspect_prediction_carries_its_mark(classification_config):
    result = marked(choice_result(classification_config.labels[1], classification_config), SUSPECT_MARK)
    item = prediction_to_ls(Prediction(7, tuple(result), 0.8), "m")
    assert item["result"][0]["id"] == "flywheel-label-error" and item["score"] == 0.8
