"""The photo-scale set: photographs behind colour clip art, exact boxes and masks, every class, reuse."""

import json

import numpy as np
import pytest
from PIL import Image

from components.core.errors import SettingsError
from components.data import photo_composites
from components.data.masks import mask_of_coco
from components.data.photo_composites import CLASSES, HEIGHT, WIDTH, make_photo_set
from components.studies.datasets import PHOTO_SEGMENTATION, materialize
from components.tasks.objects import parse_target

pytestmark = pytest.mark.unit
COUNT = 16


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory):
    return make_photo_set(tmp_path_factory.mktemp("photos"), COUNT, seed=5)


def test_images_are_photo_sized_with_one_to_six_objects_inside_them(photo_set):
    coco = json.loads(photo_set.read_text())
    assert len(coco["images"]) == COUNT
    assert [c["name"] for c in coco["categories"]] == list(CLASSES)
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=COUNT)
    assert per_image.min() >= 1 and per_image.max() <= 6
    for image in coco["images"]:
        with Image.open(photo_set.parent / image["file_name"]) as opened:
            assert opened.size == (WIDTH, HEIGHT) == (image["width"], image["height"]) and opened.mode == "RGB"
    for annotation in coco["annotations"]:
        x, y, w, h = annotation["bbox"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= WIDTH and y + h <= HEIGHT


def test_each_mask_is_the_visible_object_and_its_box_the_tight_box_of_it(photo_set):
    coco = json.loads(photo_set.read_text())
    for image in coco["images"]:
        instances = np.asarray(Image.open(photo_set.parent / "masks" / f"{image['id']:05d}.png"))
        objects = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert instances.max() == len(objects)
        for index, annotation in enumerate(objects, start=1):
            mask = mask_of_coco(annotation["segmentation"]["counts"], WIDTH, HEIGHT)
            assert np.array_equal(mask, instances == index)  # no two objects claim a pixel
            rows, cols = np.nonzero(mask)
            assert annotation["bbox"] == [float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1),
                                          float(rows.max() - rows.min() + 1)]
            assert annotation["area"] == mask.sum() >= photo_composites.MIN_VISIBLE


def test_the_background_is_a_photograph_not_a_flat_colour(photo_set):
    coco = json.loads(photo_set.read_text())
    for image in coco["images"][:4]:
        pixels = np.asarray(Image.open(photo_set.parent / image["file_name"]), dtype=np.float32)
        instances = np.asarray(Image.open(photo_set.parent / "masks" / f"{image['id']:05d}.png"))
        background = pixels[instances == 0]
        assert background.std(axis=0).mean() > 8  # texture and light, as photographs have


def test_the_set_reads_as_segmentation_targets_and_is_reused(tmp_path, photo_set):
    items = materialize(PHOTO_SEGMENTATION, tmp_path, limit=4, seed=2)
    assert len(items) == 4
    target = parse_target(items[0].label)
    assert (target["width"], target["height"]) == (WIDTH, HEIGHT)
    assert all(box["label"] in CLASSES and "mask" in box for box in target["boxes"])
    annotations = next(tmp_path.glob("photo-boxes-4-2/annotations.json"))
    before = annotations.stat().st_mtime_ns
    materialize(PHOTO_SEGMENTATION, tmp_path, limit=4, seed=2)
    assert annotations.stat().st_mtime_ns == before


def test_without_the_debian_packages_the_message_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(photo_composites, "CLIPART", tmp_path / "no-clipart")
    with pytest.raises(SettingsError, match="apt-get install openclipart-png mate-backgrounds"):
        make_photo_set(tmp_path / "set", 2)
