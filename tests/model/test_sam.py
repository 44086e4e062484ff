"""A team's SAM checkpoint answers the smart tools (params.yaml assist.sam_checkpoint): segment-anything's own
vit_b, built here with random weights (no checkpoint can be downloaded) and saved as a checkpoint is."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from components.production.assist import Measured, asker, load_sam
from components.production.ml_backend import Prompt


@pytest.fixture(scope="module")
def sam(tmp_path_factory):
    from segment_anything import sam_model_registry

    folder = tmp_path_factory.mktemp("sam")
    torch.manual_seed(0)
    torch.save(sam_model_registry["vit_b"]().state_dict(), folder / "sam_vit_b.pth")
    return load_sam("sam_vit_b.pth", "vit_b", folder)


def test_sam_answers_a_box_and_the_clicks_after_it_from_one_embedding(sam, tmp_path):
    image = np.full((300, 400, 3), (40, 160, 60), np.uint8)
    image[100:200, 150:250] = (200, 40, 40)
    Image.fromarray(image).save(tmp_path / "photo.png")
    embedded, asked = [], []
    sam.predictor.model.image_encoder.register_forward_hook(lambda *_: embedded.append(1))
    predict = sam.predictor.predict
    sam.predictor.predict = lambda **kw: asked.append(kw) or predict(**kw)  # a spy: every call goes through to SAM
    ask = asker(tmp_path / "photo.png", None, 10**8, sam)  # no mask head yet: SAM is the fallback, not GrabCut

    first = ask(Prompt("fish", (140.0, 90.0, 260.0, 210.0), (), (), 800, 600))  # drawn on the image shown at 800x600
    clicked = ask(Prompt("fish", (140.0, 90.0, 260.0, 210.0), ((200.0, 150.0),), ((20.0, 20.0),), 800, 600))

    assert first.made_by == clicked.made_by == "SAM vit_b" and len(embedded) == 1  # one embedding, two answers
    assert first.mask.shape == clicked.mask.shape == (600, 800) and first.mask.dtype == bool
    assert np.allclose(asked[0]["box"], [70, 45, 130, 105]) and asked[0]["point_coords"] is None  # at the image's 400x300
    assert np.allclose(asked[1]["point_coords"], [[100, 75], [10, 10]]) and list(asked[1]["point_labels"]) == [1, 0]
    assert Measured(0.7, 0.8, 40, "SAM vit_b").use_learned is False  # the mask head takes over only once it measures better
