"""Label Studio's ML backend protocol (what a smart tool sends, what comes back) and the classical
box-to-mask answer, without a server."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.core.labeling_config import load_labeling_config
from components.data.masks import mask_of_brush
from components.core.effort import MaskCosts
from components.production.assist import corrected, grabcut, next_click
from components.production.ml_backend import BadRequest, Prompt, answers, brush_region, parse_predict, project_id_of, prompt_of
from tests.conftest import ROOT

CONFIG = load_labeling_config(ROOT / "label_studio_config" / "segmentation.xml")


def region(kind: str, **value) -> dict:
    return {"original_width": 200, "original_height": 100, "image_rotation": 0, "type": kind,
            "from_name": "smart", "to_name": "image", "value": value}


def test_a_smart_rectangle_and_clicks_become_one_prompt_in_pixels():
    label = CONFIG.labels[0]
    box = prompt_of({"result": [region("rectanglelabels", x=10, y=20, width=50, height=40, rectanglelabels=[label])]}, CONFIG)
    assert box.box == pytest.approx((20, 20, 120, 60)) and box.label == label and (box.width, box.height) == (200, 100)
    clicks = prompt_of({"result": [
        {**region("keypointlabels", x=50, y=50, keypointlabels=[label]), "is_positive": True},
        {**region("keypointlabels", x=10, y=90, keypointlabels=[label]), "is_positive": False},
    ]}, CONFIG)
    assert clicks.box is None and clicks.positive == ((100, 50),) and clicks.negative == ((20, 90),)


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"result": []}, "holds no smart region"),
        ({"result": [region("rectanglelabels", x=10, y=20, width=50, height=40, rectanglelabels=["giraffe"])]}, "'giraffe' is not one of"),
        ({"result": [region("rectanglelabels", x=80, y=20, width=50, height=40, rectanglelabels=["0"])]}, "not inside the image"),
        ({"result": [region("keypointlabels", x=120, y=20, keypointlabels=["0"])]}, "not inside the image"),
        ({"result": [{**region("rectanglelabels", x=1, y=1, width=5, height=5, rectanglelabels=["0"]), "original_width": "wide"}]},
         "missing or not a number"),
        # what once answered 500: a label that is not a list, an infinite size or coordinate
        ({"result": [region("rectanglelabels", x=1, y=1, width=5, height=5, rectanglelabels=5)]}, "list of one label"),
        ({"result": [{**region("rectanglelabels", x=1, y=1, width=5, height=5, rectanglelabels=["0"]), "original_width": 1e400}]},
         "missing or not a number"),
        ({"result": [region("rectanglelabels", x=float("nan"), y=1, width=5, height=5, rectanglelabels=["0"])]}, "finite"),
        ({"result": [region("rectanglelabels", x=1, y=1, width=float("inf"), height=5, rectanglelabels=["0"])]}, "value.width"),
    ],
)
def test_a_prompt_that_cannot_be_answered_says_what_to_send(context, message):
    with pytest.raises(BadRequest, match=message):
        prompt_of(context, CONFIG)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "must be a JSON object"),
        ({"tasks": []}, "non-empty list of tasks"),
        ({"tasks": [{"id": "7", "data": {}}]}, "integer 'id' and a 'data' object"),
        ({"tasks": [{"id": 7, "data": {}}], "params": {"context": {"result": "x"}}}, "must be null .* or {'result'"),
        ({"tasks": [{"id": 7, "data": {}}, {"id": 8, "data": {}}], "params": {"context": {"result": []}}}, "about one task"),
        ({"tasks": [{"id": 7, "data": {}}], "project": "my-project"}, "'<project id>.<created timestamp>'"),
        ({"tasks": [{"id": 7, "data": {}}], "project": "\u00b2.1"}, "'<project id>.<created timestamp>'"),
    ],
)
def test_a_malformed_predict_call_is_a_4xx_with_what_to_send(body, message):
    with pytest.raises(BadRequest, match=message) as e:
        parse_predict(body)
    assert 400 <= e.value.status < 500


def test_label_studios_own_calls_parse():
    batch = parse_predict({"tasks": [{"id": 7, "data": {"image": "/data/x.png"}}], "project": "3.1727172000",
                           "label_config": "<View/>", "params": {"login": None, "password": None, "context": None}})
    assert batch.project_id == 3 and batch.context is None and batch.tasks[0]["id"] == 7
    assert project_id_of(None) is None and project_id_of(12) == 12


def test_a_mask_comes_back_as_the_brush_region_label_studio_shows():
    mask = np.zeros((100, 200), dtype=bool)
    mask[20:60, 30:90] = True
    shown = brush_region(mask, CONFIG.labels[0], CONFIG, 0.9)
    assert shown["type"] == "brushlabels" and shown["value"]["brushlabels"] == [CONFIG.labels[0]]
    assert (shown["original_width"], shown["original_height"]) == (200, 100)
    assert np.array_equal(mask_of_brush(shown["value"]["rle"], 200, 100), mask)
    assert answers([([shown], 0.9)], "v3") == {"results": [{"result": [shown], "score": 0.9, "model_version": "v3"}]}


def test_grabcut_finds_an_object_from_its_box_and_clicks_fix_it():
    rng = np.random.default_rng(0)
    image = (rng.normal(0, 12, (100, 200, 3)) + [40, 160, 60]).clip(0, 255).astype(np.uint8)  # grass
    ys, xs = np.mgrid[:100, :200]
    disc = (xs - 100) ** 2 + (ys - 50) ** 2 <= 30**2
    image[disc] = (rng.normal(0, 12, (int(disc.sum()), 3)) + [200, 40, 40]).clip(0, 255).astype(np.uint8)  # a red object
    label = CONFIG.labels[0]
    prompt = prompt_of({"result": [region("rectanglelabels", x=32, y=15, width=36, height=70, rectanglelabels=[label])]}, CONFIG)
    found = grabcut(image, prompt)
    iou = (found & disc).sum() / (found | disc).sum()
    assert iou > 0.85, iou
    just_clicks = prompt_of({"result": [{**region("keypointlabels", x=50, y=50, keypointlabels=[label]), "is_positive": True}]}, CONFIG)
    assert grabcut(image, just_clicks)[50, 100]  # a click alone: the object under it


def test_grabcut_gives_the_same_mask_for_the_same_box_whatever_ran_before():
    import cv2

    rng = np.random.default_rng(3)  # patches of colour that GrabCut's k-means start splits differently by its draw
    image = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (80, 60), interpolation=cv2.INTER_NEAREST)
    image = (image + rng.normal(0, 20, image.shape)).clip(0, 255).astype(np.uint8)
    prompt = Prompt("0", (15, 10, 65, 50), (), (), 80, 60)
    first = grabcut(image, prompt)
    for state in range(1, 6):  # whatever else drew from OpenCV's generator in between
        cv2.setRNGSeed(state)
        assert np.array_equal(grabcut(image, prompt), first), state


def test_a_mask_comes_back_as_a_polygon_in_a_polygon_project():
    from components.data.masks import mask_of_polygon, points_in_pixels
    from components.production.ml_backend import polygon_region

    config = load_labeling_config(ROOT / "label_studio_config" / "segmentation_polygon.xml")
    mask = np.zeros((100, 200), dtype=bool)
    mask[20:60, 30:90] = True
    shown = polygon_region(mask, config.labels[1], config, 0.8)
    assert shown["type"] == "polygonlabels" and shown["value"]["polygonlabels"] == [config.labels[1]] and shown["value"]["closed"]
    back = mask_of_polygon(points_in_pixels(shown["value"]["points"], 200, 100), 200, 100)
    assert (back & mask).sum() / (back | mask).sum() > 0.97


def test_a_prompt_on_a_scaled_image_comes_back_at_the_images_size(tmp_path):
    from PIL import Image

    from components.production.assist import grabcut_answer
    from components.production.ml_backend import Prompt

    image = np.full((1200, 1600, 3), (40, 160, 60), np.uint8)
    image[400:800, 600:1000] = (200, 40, 40)
    Image.fromarray(image).save(tmp_path / "big.png")
    mask = grabcut_answer(tmp_path / "big.png", Prompt("0", (560, 360, 1040, 840), (), (), 1600, 1200), 10**8)
    truth = np.zeros((1200, 1600), bool)
    truth[400:800, 600:1000] = True
    assert mask.shape == (1200, 1600) and (mask & truth).sum() / (mask | truth).sum() > 0.9


class _AllMask(torch.nn.Module):
    """A segmenter net whose mask head says "object" everywhere: the learned answer is then exactly the
    box's mask region, which shows how boxes and masks are scaled (no training needed)."""

    stride = 4

    def forward(self, images):
        return {"images": images}

    def mask_logits(self, outputs, boxes):
        return torch.full((len(boxes), 28, 28), 10.0)


def test_the_learned_answer_is_the_mask_head_on_the_box_at_the_images_own_size():
    from components.networks.segmenters import MASK_MARGIN
    from components.production.assist import learned
    from components.production.ml_backend import Prompt
    from components.tasks.segmentation import SegmentationModel

    model = SegmentationModel(_AllMask(), CONFIG.labels, image_size=64)
    prompt = Prompt("3", (40.0, 10.0, 120.0, 50.0), (), (), 200, 100)  # a wide image, a box off-centre
    mask, score = learned(model, np.zeros((64, 64, 3), np.uint8), prompt)
    assert mask.shape == (100, 200) and score > 0.99
    ys, xs = np.nonzero(mask)
    grow_x, grow_y = MASK_MARGIN * 80, MASK_MARGIN * 40  # the mask region: the box grown on every side
    assert abs(xs.min() - (40 - grow_x)) <= 1.5 and abs(xs.max() + 1 - (120 + grow_x)) <= 1.5
    assert abs(ys.min() - (10 - grow_y)) <= 1.5 and abs(ys.max() + 1 - (50 + grow_y)) <= 1.5


def test_a_simulated_person_clicks_on_the_largest_error_first():
    truth = np.zeros((40, 40), bool)
    truth[5:35, 5:35] = True
    missed = truth.copy()
    missed[5:35, 20:35] = False  # the right half is missing: a positive click inside it
    (x, y), positive = next_click(missed, truth)
    assert positive and truth[int(y), int(x)] and not missed[int(y), int(x)]
    extra = truth.copy()
    extra[0:40, 36:40] = True  # a thin strip of background taken, smaller than a missed corner
    extra[5:15, 5:15] = False
    (x, y), positive = next_click(extra, truth)
    assert positive and 5 <= x <= 15 and 5 <= y <= 15
    assert next_click(truth, truth) is None


def test_a_mask_made_with_the_assistant_costs_the_box_a_look_and_the_clicks_or_drawing_by_hand():
    costs = MaskCosts(box=7.0, verify=1.6, click=1.75, draw=79.0, max_clicks=5)
    truth = np.zeros((40, 40), bool)
    truth[5:35, 5:35] = True
    half = truth.copy()
    half[:, 20:] = False
    prompt = Prompt("1", (5.0, 5.0, 35.0, 35.0), (), (), 40, 40)
    right = corrected(prompt, truth, lambda p: truth, costs)
    assert (right.seconds, right.clicks, right.drawn) == (7.0 + 1.6, 0, False)
    # an assistant that listens: a positive click on the missing half brings it back
    asked = []
    fixed = corrected(prompt, truth, lambda p: asked.append(p) or (truth if p.positive else half), costs)
    assert (fixed.seconds, fixed.clicks, fixed.drawn) == (7.0 + 1.6 + 1.75, 1, False)
    assert len(asked) == 2 and asked[1].box == prompt.box and len(asked[1].positive) == 1
    # one that never does: five clicks, then the mask is drawn by hand
    stuck = corrected(prompt, truth, lambda p: half, costs)
    assert (stuck.seconds, stuck.clicks, stuck.drawn) == (7.0 + 1.6 + 5 * 1.75 + 79.0, 5, True)


def test_grabcut_refines_a_mask_it_is_given_with_the_persons_clicks():
    image = np.zeros((60, 80, 3), np.uint8)
    image[15:45, 20:60] = (200, 40, 40)
    truth = np.zeros((60, 80), bool)
    truth[15:45, 20:60] = True
    prompt = Prompt("1", (10.0, 5.0, 70.0, 55.0), (), (), 80, 60)
    start = np.zeros((60, 80), bool)
    start[15:45, 20:40] = True  # the left half of the object, as a weak mask head might answer
    clicked = Prompt("1", prompt.box, ((50.0, 30.0),), (), 80, 60)
    found = grabcut(image, clicked, start=start)
    assert found[30, 50] and found[30, 25] and not found[5, 5]


def test_a_click_on_a_small_object_marks_a_spot_in_proportion_to_the_object_not_the_image():
    rng = np.random.default_rng(0)
    image = (rng.normal(0, 12, (400, 600, 3)) + [40, 160, 60]).clip(0, 255).astype(np.uint8)  # grass
    image[200:230, 300:320] = (200, 40, 40)  # a small red object, 20 x 30
    truth = np.zeros((400, 600), bool)
    truth[200:230, 300:320] = True
    # a positive click on the grass just beside it (as on a thin part the person saw): 2% of the image's
    # shorter side would be a disc of radius 8 taking ~200 px of grass; 10% of the box's 20 px, radius 2
    clicked = Prompt("1", (296.0, 196.0, 324.0, 234.0), ((322.0, 215.0),), (), 600, 400)
    found = grabcut(image, clicked)
    assert found[215, 322] and (found & ~truth).sum() <= 20, (found & ~truth).sum()
    assert (found & truth).sum() >= 0.9 * truth.sum()


def test_clicks_refine_a_mask_that_reaches_past_the_box_without_cutting_it_off():
    image = np.zeros((60, 80, 3), np.uint8)
    image[10:50, 10:70] = (200, 40, 40)
    box = Prompt("1", (20.0, 20.0, 60.0, 40.0), ((40.0, 30.0),), (), 80, 60)  # a box drawn inside the object
    start = np.zeros((60, 80), bool)
    start[10:50, 10:70] = True  # the mask head's answer, past the box as it may be
    found = grabcut(image, box, start=start)
    assert found[12, 12] and found[47, 67]  # kept beyond the box


def test_an_object_with_an_empty_mask_costs_the_box_and_a_look():
    costs = MaskCosts(box=7.0, verify=1.6, click=1.75, draw=79.0, max_clicks=5)
    prompt = Prompt("1", (5.0, 5.0, 6.0, 6.0), (), (), 40, 40)
    made = corrected(prompt, np.zeros((40, 40), bool), lambda p: np.zeros((40, 40), bool), costs)
    assert (made.seconds, made.clicks, made.drawn) == (7.0 + 1.6, 0, False)


def test_a_missing_sam_checkpoint_says_where_to_get_one_and_how_to_do_without(tmp_path):
    from components.core.errors import SettingsError
    from components.production.assist import sam_path

    with pytest.raises(SettingsError) as e:
        sam_path("models/sam.pth", tmp_path)
    message = str(e.value)
    assert "assist.sam_checkpoint" in message and str(tmp_path / "models" / "sam.pth") in message
    assert "sam_vit_b_01ec64.pth" in message and "assist.sam_checkpoint: null" in message
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "sam.pth").write_bytes(b"weights")
    assert sam_path("models/sam.pth", tmp_path) == tmp_path / "models" / "sam.pth"  # relative to the params file's folder


@pytest.mark.parametrize("content", ["not a checkpoint", "another model's weights"])
def test_a_file_that_holds_no_sam_of_that_kind_says_so(tmp_path, content):
    from components.core.errors import SettingsError
    from components.production.assist import load_sam

    path = tmp_path / "sam.pth"
    if content == "not a checkpoint":
        path.write_bytes(b"\x00 not a pickle")
    else:
        torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(SettingsError) as e:
        load_sam("sam.pth", "vit_b", tmp_path)
    assert f"{path} is not a SAM vit_b checkpoint" in str(e.value) and "assist.sam_model_type" in str(e.value)


def test_an_unknown_kind_of_sam_is_refused_when_params_load(tmp_path):
    from components.core.errors import SettingsError
    from components.core.params import load_params

    text = (ROOT / "params.yaml").read_text().replace("sam_model_type: vit_b", "sam_model_type: vit_x")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(SettingsError, match="sam_model_type"):
        load_params(tmp_path / "params.yaml")


def test_the_mask_head_is_measured_against_the_fallback_once_per_object_and_stops_for_a_newer_champion(tmp_path):
    from PIL import Image

    from components.data.masks import coco_of
    from components.production.assist import measure
    from components.tasks.segmentation import SegmentationModel

    model = SegmentationModel(_AllMask(), CONFIG.labels, image_size=64)
    truth = np.zeros((100, 200), bool)
    truth[20:60, 40:120] = True
    Image.fromarray(np.where(truth[..., None], 200, 40).astype(np.uint8).repeat(3, axis=2)).save(tmp_path / "a.png")
    target = {"width": 200, "height": 100, "boxes": [{"label": "3", "x": 40, "y": 20, "w": 80, "h": 40, "mask": coco_of(truth)}]}
    known: dict = {}
    first = measure(model, [(tmp_path / "a.png", target)], 10**8, known=known)
    assert first.objects == 1 and first.fallback > 0.9 and len(known) == 1  # GrabCut finds the block
    known[next(iter(known))] = 0.123  # what the fallback measured before is not measured again
    assert measure(model, [(tmp_path / "a.png", target)], 10**8, known=known).fallback == 0.123
    assert measure(model, [(tmp_path / "a.png", target)], 10**8, known=known, stop=lambda: True) is None
