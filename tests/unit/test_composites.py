"""The composited detection set: exact boxes and masks, a COCO round trip, reuse, clear errors."""

import json

import numpy as np
import pytest
from PIL import Image

from components.data.composites import CATEGORIES, make_detection_set, read_coco

pytestmark = pytest.mark.unit
COUNT = 12


@pytest.fixture(scope="module")
def detection_set(tmp_path_factory):
    return make_detection_set(tmp_path_factory.mktemp("composites"), COUNT, seed=3)


def test_boxes_lie_inside_the_image_and_every_image_has_one_to_four_digits(detection_set):
    coco = json.loads(detection_set.read_text())
    assert len(coco["images"]) == COUNT
    assert [c["name"] for c in coco["categories"]] == list(CATEGORIES)
    sizes = {image["id"]: (image["width"], image["height"]) for image in coco["images"]}
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=COUNT)
    assert per_image.min() >= 1 and per_image.max() <= 4
    for annotation in coco["annotations"]:
        x, y, w, h = annotation["bbox"]
        width, height = sizes[annotation["image_id"]]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= width and y + h <= height


def test_masks_match_boxes_exactly(detection_set):
    coco = json.loads(detection_set.read_text())
    for image in coco["images"]:
        mask = np.asarray(Image.open(detection_set.parent / "masks" / image["file_name"].split("/")[-1]))
        objects = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert mask.max() == len(objects)
        for index, annotation in enumerate(objects, start=1):
            rows, cols = np.nonzero(mask == index)
            tight = [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
            assert annotation["bbox"] == [float(v) for v in tight]
            assert annotation["area"] == len(rows)


def test_read_coco_round_trips_the_set(detection_set):
    coco = json.loads(detection_set.read_text())
    items = read_coco(detection_set)
    assert [path.name for path, _ in items] == [f"{i:05d}.png" for i in range(COUNT)]
    assert all(path.exists() for path, _ in items)
    boxes = [(b["label"], [b["x"], b["y"], b["w"], b["h"]]) for _, objects in items for b in objects]
    assert boxes == [(CATEGORIES[a["category_id"] - 1], a["bbox"]) for a in coco["annotations"]]
    with Image.open(items[0][0]) as image:
        assert image.size == (128, 128) and image.mode == "RGB"


def test_an_identical_call_reuses_the_set_and_a_different_one_rewrites_it(tmp_path):
    path = make_detection_set(tmp_path, 3, seed=1)
    first = path.stat().st_mtime_ns
    assert make_detection_set(tmp_path, 3, seed=1) == path
    assert path.stat().st_mtime_ns == first
    make_detection_set(tmp_path, 4, seed=1)
    assert json.loads(path.read_text())["info"]["count"] == 4
    assert len(read_coco(path)) == 4


def test_seeds_draw_different_sets(tmp_path):
    a = read_coco(make_detection_set(tmp_path / "a", 3, seed=1))
    b = read_coco(make_detection_set(tmp_path / "b", 3, seed=2))
    assert [o for _, o in a] != [o for _, o in b]


def _export() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 80}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 30]}],
        "categories": [{"id": 3, "name": "cat"}],
    }


def test_read_coco_reads_a_user_export(tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps(_export()))
    Image.new("RGB", (100, 80)).save(tmp_path / "a.png")
    assert read_coco(path) == [(tmp_path / "a.png", [{"label": "cat", "x": 10.0, "y": 10.0, "w": 20.0, "h": 30.0}])]


def test_a_coco_exports_file_names_are_found_beside_it_in_its_images_folder_or_where_told(tmp_path):
    path = tmp_path / "annotations" / "export.json"
    path.parent.mkdir()
    path.write_text(json.dumps(_export()))
    with pytest.raises(ValueError, match=r"image 1's file_name 'a.png' is not at .*annotations/a.png or .*annotations/images/a.png\. "
                                         r"Pass the folder .* --images DIR"):
        read_coco(path)
    (path.parent / "images").mkdir()
    Image.new("RGB", (100, 80)).save(path.parent / "images" / "a.png")  # the usual export layout
    assert read_coco(path)[0][0] == path.parent / "images" / "a.png"
    elsewhere = tmp_path / "photos"
    elsewhere.mkdir()
    Image.new("RGB", (100, 80)).save(elsewhere / "a.png")
    assert read_coco(path, images_dir=elsewhere)[0][0] == elsewhere / "a.png"  # --images wins
    with pytest.raises(ValueError, match=r"is not at .*nowhere/a.png\. Pass"):
        read_coco(path, images_dir=tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda c: c.pop("categories"), "has no 'categories'"),
        (lambda c: c["annotations"][0].pop("bbox"), "annotation 7 has no 'bbox'"),
        (lambda c: c["annotations"][0].update(bbox=[1, 2]), r"annotation 7 has bbox \[1, 2\]"),
        (lambda c: c["annotations"][0].update(category_id=9), "annotation 7 has unknown category id 9"),
        (lambda c: c["annotations"][0].update(image_id=2), "annotation 7 refers to image id 2"),
        (lambda c: c["annotations"][0].update(bbox=[90, 10, 20, 30]), "outside its 100x80 image"),
        (lambda c: c["annotations"][0].update(bbox=[10, 10, 0, 30]), "zero area"),
        (lambda c: c["images"][0].pop("width"), "image 1 has no 'width'"),
    ],
)
def test_a_malformed_coco_file_says_what_is_wrong(tmp_path, break_it, message):
    coco = _export()
    break_it(coco)
    path = tmp_path / "export.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=message):
        read_coco(path)


def test_read_coco_rejects_a_file_that_is_not_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_coco(path)
