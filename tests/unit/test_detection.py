"""Detection's pure parts: percent <-> pixels, bad boxes, box matching, targets <-> results."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
from PIL import Image

from components.core.conversions import Annotation
from components.core.errors import AnnotationError
from components.core.labeling_config import load_labeling_config
from components.tasks import task_type_of
from components.core.effort import EffortCosts, Edits, effort_saved
from components.tasks.boxes import box_edits, box_from_value, boxes_match, value_from_box
from components.tasks.detection import Detection
from components.tasks.objects import make_target, parse_target
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def config():
    return load_labeling_config(ROOT / "label_studio_config" / "detection.xml")


def rectangle(config, label: str, x: float, y: float, w: float, h: float, rotation: float = 0) -> dict:
    return {"from_name": config.from_name, "to_name": config.to_name, "type": "rectanglelabels",
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation, "rectanglelabels": [label]}}


def annotation(*regions: dict) -> Annotation:
    return Annotation(id=9, result=tuple(regions), annotator="a@b.c", updated_at=datetime(2026, 1, 1, tzinfo=UTC))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "im.png"
    Image.new("RGB", (200, 100)).save(path)
    return path


def test_the_config_picks_the_task_type(config, classification_config):
    assert config.task == "detection" and isinstance(task_type_of(config), Detection)
    assert task_type_of(classification_config).name == "classification"


@pytest.mark.parametrize(("x", "y", "w", "h", "width", "height"), [(10, 20, 30, 40, 200, 100), (0, 0, 127.5, 3.25, 128, 96)])
def test_percent_and_pixels_round_trip(x, y, w, h, width, height):
    value = value_from_box(x, y, w, h, width, height)
    assert box_from_value(value, width, height) == pytest.approx((x, y, w, h))


def test_an_annotation_becomes_pixels_of_the_image(config, image):
    task = Detection()
    target = parse_target(task.target_of(annotation(rectangle(config, "3", 10, 20, 30, 40)), config, 5, image))
    assert (target["width"], target["height"]) == (200, 100)
    assert target["boxes"] == [{"label": "3", "x": 20.0, "y": 20.0, "w": 60.0, "h": 40.0}]
    assert task.classes_in(make_target(200, 100, target["boxes"])) == ["3"]


def test_no_box_means_nothing_to_detect(config, image):
    assert parse_target(Detection().target_of(annotation(), config, 5, image))["boxes"] == []


def test_a_box_overhanging_by_a_hair_is_clipped(config, image):
    target = parse_target(Detection().target_of(annotation(rectangle(config, "1", 90, 50, 10.5, 10)), config, 5, image))
    assert target["boxes"][0]["x"] + target["boxes"][0]["w"] == pytest.approx(200.0)


@pytest.mark.parametrize(
    ("region", "message"),
    [
        (dict(label="1", x=10, y=10, w=20, h=20, rotation=30), r"Task 5: .*box 1 is rotated by 30 degrees.*left out"),
        (dict(label="1", x=10, y=10, w=0, h=20), r"Task 5: .*box 1 has zero area"),
        (dict(label="1", x=90, y=10, w=30, h=20), r"Task 5: .*box 1 lies outside the image"),
        (dict(label="cat", x=10, y=10, w=20, h=20), r"Task 5: .*box 1 uses label 'cat', which is not in the labeling config"),
    ],
)
def test_bad_boxes_name_the_task_and_the_box(config, image, region, message):
    with pytest.raises(AnnotationError, match=message) as e:
        Detection().target_of(annotation(rectangle(config, **region)), config, 5, image)
    assert e.value.task_ids == [5]


def box(label: str, x0: float, y0: float, x1: float, y1: float) -> tuple[str, np.ndarray]:
    return label, np.array([x0, y0, x1, y1], dtype=float)


@pytest.mark.parametrize(
    ("predicted", "truth", "expected"),
    [
        ([box("1", 0, 0, 10, 10)], [box("1", 1, 1, 11, 11)], True),
        ([box("2", 0, 0, 10, 10)], [box("1", 0, 0, 10, 10)], False),  # wrong class
        ([box("1", 0, 0, 10, 10)], [box("1", 6, 6, 16, 16)], False),  # IoU under 0.5
        ([box("1", 0, 0, 10, 10), box("1", 0, 0, 10, 10)], [box("1", 0, 0, 10, 10)], False),  # one extra
        ([box("1", 0, 0, 10, 10)], [box("1", 0, 0, 10, 10), box("2", 20, 20, 30, 30)], False),  # one missing
        ([], [], True),
        ([box("1", 0, 0, 10, 10), box("1", 1, 0, 11, 10)], [box("1", 1, 0, 11, 10), box("1", 0, 0, 10, 10)], True),
    ],
)
def test_a_suggestion_is_accepted_only_when_every_box_matches(predicted, truth, expected):
    assert boxes_match(predicted, truth) is expected


@pytest.mark.parametrize(
    ("predicted", "truth", "expected"),
    [
        ([box("1", 0, 0, 10, 10)], [box("1", 1, 1, 11, 11)], Edits(kept=1)),
        ([box("2", 0, 0, 10, 10)], [box("1", 0, 0, 10, 10)], Edits(adjusted=1)),  # right place, wrong class
        ([box("1", 0, 0, 10, 10)], [box("1", 4, 0, 14, 10)], Edits(adjusted=1)),  # IoU 0.43: loose, adjusted
        ([box("1", 0, 0, 10, 10)], [box("1", 4, 4, 14, 14)], Edits(deleted=1, drawn=1)),  # IoU 0.22: redrawn
        ([box("1", 0, 0, 10, 10)], [box("1", 30, 30, 40, 40)], Edits(deleted=1, drawn=1)),  # nowhere near
        ([box("1", 0, 0, 10, 10), box("1", 0, 0, 10, 10)], [box("1", 0, 0, 10, 10)], Edits(kept=1, deleted=1)),  # a duplicate
        ([], [box("1", 0, 0, 10, 10), box("2", 20, 20, 30, 30)], Edits(drawn=2)),  # no suggestion: everything drawn
        # a maximum matching: the first true box's best suggestion (IoU 0.9) is the only one the second
        # fits (0.6); a greedy pick would leave the second without a match, yet both can be kept
        ([box("1", 3.5, 0, 13.5, 10), box("1", 0, 0, 10, 10)], [box("1", 3, 0, 13, 10), box("1", 6, 0, 16, 10)], Edits(kept=2)),
    ],
)
def test_each_true_box_is_kept_adjusted_or_drawn_and_each_wrong_suggestion_deleted(predicted, truth, expected):
    assert box_edits(predicted, truth) == expected


def test_effort_saved_counts_verifying_what_is_kept_against_drawing_everything():
    costs = EffortCosts(draw=7.0, verify=1.6, adjust=7.0, delete=1.6)
    assert effort_saved(Edits(kept=4), costs) == pytest.approx(1 - 1.6 / 7.0)
    assert effort_saved(Edits(drawn=4), costs) == 0.0
    # a wrong suggestion costs more than none: deleting it is work on top of drawing
    assert effort_saved(Edits(deleted=2, drawn=1), costs) == pytest.approx(1 - (3.2 + 7.0) / 7.0)
    assert effort_saved(Edits(deleted=2), costs) is None  # nothing to draw: no saving to speak of
    assert (Edits(kept=1) + Edits(adjusted=1, deleted=2)).objects == 2


def test_a_target_becomes_a_result_with_scores_and_back(config):
    task = Detection()
    target = make_target(200, 100, [{"label": "4", "x": 20, "y": 10, "w": 50, "h": 30, "score": 0.8765}])
    result = task.result_of(target, config)
    assert result[0]["value"]["rectanglelabels"] == ["4"] and result[0]["score"] == 0.8765
    assert result[0]["value"]["x"] == pytest.approx(10.0) and result[0]["value"]["height"] == pytest.approx(30.0)
    assert task.agree(result, result, config) is True
    moved = [{**result[0], "value": {**result[0]["value"], "x": 40.0}}]
    assert task.agree(result, moved, config) is False


class _Peaks(torch.nn.Module):
    """A stand-in network whose output is fixed detections (a fake: it only feeds `read` known rows)."""

    def __init__(self, rows: torch.Tensor):
        super().__init__()
        self.rows = rows

    def forward(self, images):
        return {"embedding": torch.zeros(len(images), 3)}

    def decode_padded(self, outputs, k):
        return self.rows[None].expand(len(outputs["embedding"]), -1, -1)

    def embed(self, outputs):
        return outputs["embedding"]


def test_reading_shows_confident_boxes_scored_and_ranks_the_borderline(config):
    from components.tasks.detection import DetectionModel

    rows = torch.tensor([[10, 10, 30, 40, 0.9, 3], [50, 50, 70, 70, 0.32, 1], [0, 0, 5, 5, 0.1, 2]], dtype=torch.float32)
    model = DetectionModel(_Peaks(rows), config.labels, image_size=128)
    readings, embeddings = Detection().read(model, torch.zeros(2, 3, 128, 128), config)
    shown = readings[0].result
    assert [r["value"]["rectanglelabels"] for r in shown] == [["3"], ["1"]]
    assert [r["score"] for r in shown] == [0.9, 0.32]
    assert readings[0].confidence == pytest.approx(0.32)  # the weakest box shown
    assert readings[0].uncertainty > 0.9  # a box right at the line between shown and not
    assert shown[0]["value"]["x"] == pytest.approx(100 * 10 / 128) and embeddings.shape == (2, 3)


def test_a_model_shows_objects_from_its_own_operating_point(config):
    from components.tasks.detection import DetectionModel

    rows = torch.tensor([[10, 10, 30, 40, 0.9, 3], [50, 50, 70, 70, 0.32, 1], [80, 80, 100, 100, 0.18, 2]], dtype=torch.float32)
    model = DetectionModel(_Peaks(rows), config.labels, image_size=128)
    model.shown_from = 0.15
    readings, _ = Detection().read(model, torch.zeros(1, 3, 128, 128), config)
    assert [r["value"]["rectanglelabels"] for r in readings[0].result] == [["3"], ["1"], ["2"]]


def test_the_operating_point_is_the_score_that_saves_most_seconds():
    from components.tasks.boxes import MATCH_IOU, NEAR_IOU, iou
    from components.tasks.objects import SHOWN_FROM, choose_shown_from

    costs = EffortCosts(draw=7.0, verify=1.6, adjust=7.0, delete=1.6)
    box = lambda x: np.array([x, 10.0, x + 20, 30.0])  # noqa: E731
    truth = [[("1", box(0)), ("2", box(40))]]
    # an under-confident model: the second true object scores 0.12, a wrong one 0.08
    found = [[("1", box(0), 0.9), ("2", box(40), 0.12), ("3", box(80), 0.08)]]
    point, saved = choose_shown_from(found, truth, iou, MATCH_IOU, NEAR_IOU, costs)
    assert 0.08 < point <= 0.12 and saved == pytest.approx(1 - 3.2 / 14)
    # nothing gained below the default: it stays
    point, _ = choose_shown_from([[("1", box(0), 0.9), ("3", box(80), 0.2)]], [[("1", box(0))]], iou, MATCH_IOU, NEAR_IOU, costs)
    assert point == SHOWN_FROM


def test_suggested_boxes_never_leave_the_image(config):
    from components.tasks.detection import DetectionModel

    rows = torch.tensor([[-6.0, 100.0, 20.0, 140.0, 0.9, 3]])
    readings, _ = Detection().read(DetectionModel(_Peaks(rows), config.labels, image_size=128), torch.zeros(1, 3, 128, 128), config)
    value = readings[0].result[0]["value"]
    assert value["x"] == 0.0 and value["y"] + value["height"] == pytest.approx(100.0)


def test_an_empty_validation_split_scores_zero(config):
    from components.tasks.detection import DetectionModel
    from components.tasks.object_training import BoxesDataset

    scores = Detection().evaluate(DetectionModel(_Peaks(torch.zeros(1, 6)), config.labels, 128), BoxesDataset(torch.zeros(0, 3, 128, 128), []), config.labels)
    assert scores.score == 0.0 and len(scores.correct) == 0


def test_a_malformed_box_is_not_read_as_acceptance(config):
    broken = [{**rectangle(config, "1", 10, 10, 20, 20), "value": {"rectanglelabels": ["1"]}}]
    assert Detection().agree(broken, [rectangle(config, "1", 10, 10, 20, 20)], config) is False
    assert Detection().agree([rectangle(config, "1", 10, 10, 20, 20)], broken, config) is None


_boxes = st.lists(
    st.tuples(st.sampled_from("12"), st.integers(0, 30), st.integers(0, 30), st.integers(2, 20), st.integers(2, 20))
    .map(lambda b: box(b[0], b[1], b[2], b[1] + b[3], b[2] + b[4])),
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(predicted=_boxes, truth=_boxes)
def test_every_object_is_accounted_for_once_and_a_whole_accept_means_every_box_kept(predicted, truth):
    edits = box_edits(predicted, truth)
    assert edits.objects == len(truth)
    assert edits.kept + edits.adjusted + edits.deleted == len(predicted)
    assert boxes_match(predicted, truth) == (edits.kept == len(truth) == len(predicted))


def test_the_report_counts_objects_kept_and_the_time_saved_from_annotations_and_their_suggestions(config):
    from components.studies.report import measure_acceptance
    from components.studies.report.contents import build_report, summary_lines

    def task(task_id: int, predicted: list[dict], drawn: list[dict]) -> dict:
        return {
            "id": task_id, "data": {}, "updated_at": "2026-01-01T00:00:00Z",
            "predictions": [{"id": 100 + task_id, "model_version": "m-v1", "result": predicted}],
            "annotations": [{"id": task_id, "result": drawn, "created_at": "2026-01-01T00:00:00Z", "parent_prediction": 100 + task_id}],
        }

    a, b = rectangle(config, "1", 10, 10, 20, 20), rectangle(config, "2", 50, 50, 20, 20)
    far = rectangle(config, "1", 80, 0, 10, 10)
    tasks = [task(1, [a, b], [a, b]),  # both kept
             task(2, [a, far], [a, b])]  # one kept, one deleted, one drawn
    costs = EffortCosts(draw=7.0, verify=1.6, adjust=7.0, delete=1.6)
    acceptance = measure_acceptance(tasks, config, Detection(), costs)
    assert (acceptance.shown, acceptance.accepted) == (2, 1)
    assert acceptance.edits == Edits(kept=3, deleted=1, drawn=1)
    assert acceptance.objects_kept == 0.75
    assert acceptance.effort_saved == pytest.approx(1 - (3 * 1.6 + 1.6 + 7.0) / (4 * 7.0))
    report = build_report([], list(config.labels), {"1": 2, "2": 2}, None, acceptance, target_accuracy=0.7)
    assert any(line.startswith("Objects kept as suggested: 75.0% (3/4; 0 adjusted, 1 drawn, 1 suggestions deleted); "
                               "annotation time saved 52%") for line in summary_lines(report))


def test_the_strategy_report_says_what_the_projects_suggestions_save():
    from components.studies.strategy import suggestions_line

    line = suggestions_line("masks", 0.62, 0.55)
    assert "kept 62% of the suggested masks" in line and "55% less time" in line and "about 2.2x the images" in line
    assert suggestions_line("boxes", None, None) is None  # nothing made from a suggestion yet: no line
