"""Segmentation's pure parts: mask conversions, bad regions, mask matching, targets <-> results."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from components.core.conversions import Annotation
from components.core.errors import AnnotationError
from components.core.labeling_config import load_labeling_config
from components.data.masks import (
    brush_of, coco_of, mask_iou, mask_of_brush, mask_of_coco, mask_of_coco_segmentation, mask_of_polygon,
    points_in_percent, points_in_pixels, polygon_of, polygon_problem, tight_box,
)
from components.networks.segmenters import build_segmenter
from components.tasks import task_type_of
from components.tasks.objects import parse_target
from components.tasks.segmentation import Segmentation, SegmentationModel, masks_match
from tests.conftest import ROOT

pytestmark = pytest.mark.unit
WIDTH, HEIGHT = 60, 40


@pytest.fixture(scope="module")
def brush_config():
    return load_labeling_config(ROOT / "label_studio_config" / "segmentation.xml")


@pytest.fixture(scope="module")
def polygon_config():
    return load_labeling_config(ROOT / "label_studio_config" / "segmentation_polygon.xml")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "im.png"
    Image.new("RGB", (WIDTH, HEIGHT)).save(path)
    return path


def ring() -> np.ndarray:
    """A mask with a hole (like a drawn "0")."""
    ys, xs = np.mgrid[:HEIGHT, :WIDTH]
    r = np.hypot(xs - 20, ys - 18)
    return (r <= 12) & (r >= 6)


def brush(config, label: str, mask: np.ndarray, width: int = WIDTH, height: int = HEIGHT) -> dict:
    return {"from_name": config.from_name, "to_name": config.to_name, "type": "brushlabels",
            "original_width": width, "original_height": height,
            "value": {"format": "rle", "rle": brush_of(mask), "brushlabels": [label]}}


def polygon(config, label: str, points_px: list[list[float]]) -> dict:
    return {"from_name": config.from_name, "to_name": config.to_name, "type": "polygonlabels",
            "original_width": WIDTH, "original_height": HEIGHT,
            "value": {"points": points_in_percent(np.array(points_px), WIDTH, HEIGHT), "closed": True, "polygonlabels": [label]}}


def annotation(*regions: dict) -> Annotation:
    return Annotation(id=9, result=tuple(regions), annotator="a@b.c", updated_at=datetime(2026, 1, 1, tzinfo=UTC))


def test_both_configs_pick_segmentation(brush_config, polygon_config):
    assert isinstance(task_type_of(brush_config), Segmentation) and isinstance(task_type_of(polygon_config), Segmentation)


def test_brush_rle_and_coco_rle_are_pixel_exact():
    mask = ring()
    assert (mask_of_brush(brush_of(mask), WIDTH, HEIGHT) == mask).all()
    assert (mask_of_coco(coco_of(mask), WIDTH, HEIGHT) == mask).all()
    assert (mask_of_coco_segmentation({"size": [HEIGHT, WIDTH], "counts": coco_of(mask)}, WIDTH, HEIGHT) == mask).all()


def test_polygons_convert_within_tolerance():
    square = np.array([[10.0, 5.0], [50.0, 5.0], [50.0, 35.0], [10.0, 35.0]])  # pixel edges: 40 x 30 pixels
    mask = mask_of_polygon(square, WIDTH, HEIGHT)
    assert mask.sum() == 40 * 30 and tight_box(mask) == (10.0, 5.0, 40.0, 30.0)
    assert np.allclose(points_in_pixels(points_in_percent(square, WIDTH, HEIGHT), WIDTH, HEIGHT), square, atol=1e-2)
    blob = np.zeros((HEIGHT, WIDTH), dtype=bool)
    blob[8:30, 12:44] = True
    blob[8:16, 12:20] = False  # not convex
    again = mask_of_polygon(polygon_of(blob), WIDTH, HEIGHT)
    assert mask_iou(blob[None], again[None])[0, 0] >= 0.98
    # COCO polygons (a user's export) rasterize the same way
    coco_polygon = [float(v) for point in square for v in point]
    assert (mask_of_coco_segmentation([coco_polygon], WIDTH, HEIGHT) == mask).all()


@pytest.mark.parametrize(("points", "says"), [
    ([[0, 0], [10, 10], [10, 0], [0, 10]], "edges cross"),
    ([[0, 0], [10, 10]], "at least 3"),
])
def test_a_bad_polygon_is_named(points, says):
    assert says in polygon_problem(np.array(points, dtype=float))


def test_a_bad_rle_is_named():
    with pytest.raises(ValueError, match="does not decode"):
        mask_of_brush([1, 2, 3], WIDTH, HEIGHT)
    with pytest.raises(ValueError, match="holds .* pixels"):
        mask_of_brush(brush_of(ring()), WIDTH + 1, HEIGHT)
    with pytest.raises(ValueError, match="not a list of bytes"):
        mask_of_brush("abc", WIDTH, HEIGHT)


def test_a_brush_annotation_becomes_a_target_and_back(brush_config, image):
    task = Segmentation()
    mask = ring()
    target = task.target_of(annotation(brush(brush_config, "3", mask)), brush_config, 1, image)
    parsed = parse_target(target)
    assert parsed["width"] == WIDTH and [o["label"] for o in parsed["boxes"]] == ["3"]
    assert (parsed["boxes"][0]["x"], parsed["boxes"][0]["y"]) == tight_box(mask)[:2]
    assert task.classes_in(target) == ["3"]
    result = task.result_of(target, brush_config)
    assert (mask_of_brush(result[0]["value"]["rle"], WIDTH, HEIGHT) == mask).all()
    assert task.agree(result, [brush(brush_config, "3", mask)], brush_config) is True
    assert task.agree(result, [brush(brush_config, "5", mask)], brush_config) is False
    eroded = mask.copy()
    eroded[:, :20] = False  # half the ring: IoU about 0.5
    assert task.agree(task.result_of(task.target_of(annotation(brush(brush_config, "3", eroded)), brush_config, 1, image), brush_config),
                      [brush(brush_config, "3", mask)], brush_config) is False
    assert task.target_of(annotation(), brush_config, 1, image) == '{"width":60,"height":40,"boxes":[]}'


def test_a_polygon_annotation_becomes_a_target_and_back(polygon_config, image):
    task = Segmentation()
    corners = [[10.0, 5.0], [50.0, 5.0], [50.0, 35.0], [10.0, 35.0]]
    target = task.target_of(annotation(polygon(polygon_config, "7", corners)), polygon_config, 1, image)
    result = task.result_of(target, polygon_config)
    assert result[0]["type"] == "polygonlabels" and result[0]["value"]["polygonlabels"] == ["7"]
    assert task.agree(result, [polygon(polygon_config, "7", corners)], polygon_config) is True


@pytest.mark.parametrize(("region", "says"), [
    (lambda c: brush(c, "3", ring(), width=WIDTH + 2), "drawn on a 62x40 image"),
    (lambda c: {**brush(c, "3", ring()), "value": {"format": "rle", "rle": [7, 7, 7], "brushlabels": ["3"]}}, "does not decode"),
    (lambda c: brush(c, "3", np.zeros((HEIGHT, WIDTH), bool)), "covers no pixel"),
    (lambda c: brush(c, "cat", ring()), "not in the labeling config"),
])
def test_a_bad_brush_region_quarantines_its_task_with_a_message(brush_config, image, region, says):
    with pytest.raises(AnnotationError, match=says) as caught:
        Segmentation().target_of(annotation(region(brush_config)), brush_config, 42, image)
    assert "Task 42" in str(caught.value) and caught.value.task_ids == [42]


def test_a_self_intersecting_polygon_quarantines_its_task(polygon_config, image):
    bowtie = [[10.0, 5.0], [50.0, 35.0], [50.0, 5.0], [10.0, 35.0]]
    with pytest.raises(AnnotationError, match="edges cross.*Redraw this polygon"):
        Segmentation().target_of(annotation(polygon(polygon_config, "1", bowtie)), polygon_config, 7, image)


def test_masks_match_one_to_one_at_iou_08():
    a = ring()
    b = np.zeros_like(a)
    b[:5, :5] = True
    assert masks_match([("1", a), ("2", b)], [("2", b), ("1", a)])
    assert not masks_match([("1", a)], [("1", a), ("2", b)])  # one missing
    assert not masks_match([("1", a), ("1", a)], [("1", a), ("2", b)])  # swapped class
    assert masks_match([], [])


def test_the_model_trains_reads_and_answers_at_the_images_own_size(brush_config):
    torch.manual_seed(0)
    net = build_segmenter("mask_centernet", 10, {"width": 8, "head_width": 16, "mask_width": 8})
    images = torch.rand(2, 3, 64, 64)
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 10:30, 12:40] = True
    targets = [{"boxes": torch.tensor([[12.0, 10.0, 40.0, 30.0]]), "labels": torch.tensor([3]), "masks": masks},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 64, 64, dtype=torch.bool)}]
    loss = net.loss(net(images), targets)
    loss.backward()
    assert torch.isfinite(loss) and net.mask_head[0].weight.grad is not None
    model = SegmentationModel(net.eval(), brush_config.labels, 64)
    rows, probabilities = model(images)
    assert rows.shape == (2, 20, 6) and probabilities.shape == (2, 20, 28, 28)
    readings, embeddings = Segmentation().read(model, images, brush_config, sizes=[(96, 80), (64, 64)])
    assert len(readings) == 2 and embeddings.shape[0] == 2
    for reading, (width, height) in zip(readings, [(96, 80), (64, 64)], strict=True):
        assert 0 <= reading.confidence <= 1 and 0 <= reading.uncertainty <= 1
        for region in reading.result:  # every suggested mask is drawn on the image's own size
            assert (region["original_width"], region["original_height"]) == (width, height)
            assert mask_of_brush(region["value"]["rle"], width, height).any() and 0 <= region["score"] <= 1


def test_the_error_finder_grades_each_drawn_mask_by_the_out_of_fold_masks():
    from components.tasks.segmentation import label_quality

    a, b = ring(), np.zeros((HEIGHT, WIDTH), dtype=bool)
    b[2:8, 40:50] = True

    def found(label: str, mask: np.ndarray, score: float) -> dict:
        return {"label": label, "mask": coco_of(mask), "score": score}

    assert label_quality([("3", a)], [found("3", a, 0.9)], WIDTH, HEIGHT) == pytest.approx(1.0)
    assert label_quality([("3", a)], [found("8", a, 0.9)], WIDTH, HEIGHT) == 0.0  # the model calls it an 8
    assert label_quality([("3", a)], [found("3", a, 0.15)], WIDTH, HEIGHT) == pytest.approx(0.5)  # found, unsure
    assert label_quality([("3", a)], [found("3", a, 0.9), found("1", b, 0.8)], WIDTH, HEIGHT) == pytest.approx(0.2)  # one left unlabeled
    assert label_quality([], [], WIDTH, HEIGHT) == 1.0 and label_quality([("3", a)], [], WIDTH, HEIGHT) == 0.0
