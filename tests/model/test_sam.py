"""A team's SAM checkpoint answers the smart tools (params.yaml assist.sam_checkpoint): segment-anything's own
vit_b, built here with random weights (no checkpoint can be downloaded) and saved as a checkpoint is. What its
masks are worth is not asserted (random weights); how it is asked is."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from components.production.assist import asker, load_sam
from components.production.ml_backend import Prompt


@pytest.fixture(scope="module")
def sam(tmp_path_factory):
    from segment_anything import sam_model_registry

    folder = tmp_path_factory.mktemp("sam")
    torch.manual_seed(0)
    torch.save(sam_model_registry["vit_b"]().state_dict(), folder / "sam_vit_b.pth")
    return load_sam("sam_vit_b.pth", "vit_b", folder)


def test_sam_answers_a_box_and_the_clicks_after_it_from_one_embedding(sam, tmp_path):
    image = np.full((1500, 2000, 3), (40, 160, 60), np.uint8)  # larger than SAM reads: decoded at 1024x768
    image[500:1000, 750:1250] = (200, 40, 40)
    Image.fromarray(image).save(tmp_path / "photo.png")
    embedded, asked = [], []
    sam.predictor.model.image_encoder.register_forward_hook(lambda *_: embedded.append(1))
    predict = sam.predictor.predict
    sam.predictor.predict = lambda **kw: asked.append(kw) or predict(**kw)  # a spy: every call goes through to SAM
    box = Prompt("fish", (700.0, 450.0, 1300.0, 1050.0), (), (), 2000, 1500)
    ask = asker(tmp_path / "photo.png", None, 10**8, sam)  # no mask head yet: SAM is the fallback, not GrabCut

    with ThreadPoolExecutor(2) as pool:  # a box asked twice at once (a double click): one embedding for both
        first, again = pool.map(ask, [box, box])
    clicked = ask(Prompt("fish", box.box, ((1000.0, 750.0),), ((100.0, 100.0),), 2000, 1500))

    assert first.made_by == clicked.made_by == "SAM vit_b" and len(embedded) == 1  # one embedding, three answers
    assert first.mask.shape == clicked.mask.shape == (1500, 2000) and first.mask.dtype == bool
    assert np.array_equal(first.mask, again.mask)
    assert np.allclose(asked[0]["box"], [358.4, 230.4, 665.6, 537.6]) and asked[0]["point_coords"] is None  # at 1024x768
    assert np.allclose(asked[2]["point_coords"], [[512, 384], [51.2, 51.2]]) and list(asked[2]["point_labels"]) == [1, 0]
    assert asked[0]["multimask_output"] is False  # a box is not ambiguous; one click alone is (SAM's three guesses)
    one_click = ask(Prompt("fish", None, ((1000.0, 750.0),), (), 2000, 1500))
    assert asked[3]["multimask_output"] is True and one_click.mask.shape == (1500, 2000) and len(embedded) == 1

    # measuring in the background embeds its images without keeping them: a person's stays
    Image.fromarray(np.roll(image, 40, axis=1)).save(tmp_path / "validation.png")
    sam.masks(tmp_path / "validation.png", [box], 10**8)
    ask(box)
    assert len(embedded) == 2 and len(sam._embeddings) == 1  # measuring's own; the person's box from theirs, still kept
