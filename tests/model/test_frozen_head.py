"""A head on a frozen backbone trains on the backbone's features computed once, and learns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from components.networks.architectures import build_network
from components.networks.backbones import backbone_of
from components.tasks.classification import Classification, InferenceModel, evaluate
from components.learning.training import CACHED_VIEWS, Backbone, CachedFeatures, fit, fit_steps
from components.networks.preprocessing import load_images

pytestmark = pytest.mark.model
LABELS = [str(d) for d in range(10)]
ARCHITECTURE, OPTIONS, SIZE = "conv4", {"width": 8}, 16


def digits_snapshot(folder, count=300):
    (folder / "images").mkdir(parents=True)
    digits = load_digits()
    rows = []
    for i in range(count):
        Image.fromarray((digits.images[i] * (255 / 16)).round().astype(np.uint8)).save(folder / "images" / f"{i}.png")
        rows.append({"task_id": i, "image": f"images/{i}.png", "label": str(digits.target[i]), "split": "val" if i % 4 == 0 else "train"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    folder = tmp_path_factory.mktemp("snapshot")
    return folder, digits_snapshot(folder, count=160)


@pytest.fixture(scope="module")
def frozen(snapshot):
    """A backbone as pretraining would hand it over, frozen so only the head trains: random convolutions
    (seeded) whose batch norms learned the images' statistics (without them the features are flat)."""
    folder, manifest = snapshot
    torch.manual_seed(0)
    backbone = backbone_of(build_network(ARCHITECTURE, len(LABELS), OPTIONS)).train()
    for layer in backbone.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.momentum = None  # a plain average over the batch
    with torch.no_grad():
        backbone((load_images([folder / p for p in manifest["image"]], SIZE) - 0.5) / 0.5)
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    return Backbone(state, "pretraining-run", frozen=True, lr_scale=0.1)


def unchanged(model: nn.Module, backbone: Backbone) -> bool:
    kept = backbone_of(model.net).state_dict()
    return all(torch.equal(kept[k], v) for k, v in backbone.state.items())


def test_a_head_on_a_frozen_backbone_learns_from_cached_features(snapshot, frozen, tmp_path):
    folder, manifest = snapshot
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trained = fit(
        Classification(), folder, manifest, LABELS, ARCHITECTURE, OPTIONS, image_size=SIZE, batch_size=32, max_epochs=100,
        min_steps=300, patience=5, lr=3e-3, augment=True, seed=0, tracking_uri=tracking_uri, experiment="frozen",
        run_tags={}, progress=False, backbone=frozen,
    )
    assert trained.metrics["best_val_accuracy"] > 0.3, trained.metrics  # chance is 0.1
    assert unchanged(trained.model, frozen), "the frozen backbone must come out as it went in"
    run = MlflowClient(tracking_uri).get_run(trained.run_id)
    assert run.data.params["cached_views"] == str(CACHED_VIEWS)  # it trained on cached features
    assert run.data.params["architecture"] == ARCHITECTURE and "train_loss" in run.data.metrics


def test_a_label_check_fold_on_a_frozen_backbone_learns_from_cached_features(snapshot, frozen):
    folder, manifest = snapshot
    train, held = manifest[manifest["split"] == "train"], manifest[manifest["split"] == "val"]
    model = fit_steps(
        Classification(), folder, train, LABELS, ARCHITECTURE, OPTIONS, image_size=SIZE, steps=300, batch_size=32,
        lr=3e-3, augment=False, seed=0, backbone=frozen,
    )
    images = load_images([folder / p for p in held["image"]], SIZE)
    targets = torch.tensor([LABELS.index(label) for label in held["label"]])
    assert evaluate(model, images, targets, len(LABELS))["accuracy"] > 0.3  # chance is 0.1
    assert unchanged(model, frozen)


def test_the_cached_features_are_those_the_frozen_backbone_computes_of_each_view():
    images, targets = torch.rand(5, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 0, 1])
    plain = Classification().module(ARCHITECTURE, OPTIONS, LABELS[:3], 1e-3, augment=False)
    head, cached = plain.head_on_features(TensorDataset(images, targets), views=4)
    assert cached.features.shape[:2] == (1, 5) and torch.equal(cached.targets, targets)  # no jitter: the images themselves
    assert head.head is plain.net.head and head.hparams.lr == 1e-3
    plain.eval()
    with torch.no_grad():
        assert torch.allclose(plain.net.head(cached.features[0]), plain(images), atol=1e-5)
    jittered = Classification().module(ARCHITECTURE, OPTIONS, LABELS[:3], 1e-3, augment=True)
    _, views = jittered.head_on_features(TensorDataset(images, targets), views=4)
    assert views.features.shape[:2] == (4, 5) and not torch.equal(views.features[0], views.features[1])


def test_batches_of_cached_views_take_each_image_once_per_pass():
    images, views, batch = 7, 3, 3
    cached = CachedFeatures(torch.arange(views * images, dtype=torch.float).reshape(views, images, 1), torch.arange(images))
    batches = list(cached.loader(batch, seed=0, passes=2))
    assert [len(b[1]) for b in batches] == [3, 3, 1] * 2
    for first in (0, 3):
        seen = torch.cat([targets for _, targets in batches[first:first + 3]])
        assert sorted(seen.tolist()) == list(range(images))  # one pass: every image once, as the images' own loader
    for features, targets in batches:  # each row is one view of its own image
        assert torch.equal(features[:, 0].long() % images, targets)
    drawn = {int(f) // images for features, _ in batches for f in features[:, 0]}
    assert drawn <= set(range(views)) and len(drawn) > 1


class Elsewise(nn.Module):
    """A backbone and a head that the network does not simply chain."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 4))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) * 2


def test_a_network_that_is_not_its_head_of_its_features_trains_whole():
    module = Classification().module(ARCHITECTURE, OPTIONS, LABELS[:3], 1e-3, augment=False)
    module.net = Elsewise()
    assert module.head_on_features(TensorDataset(torch.rand(4, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 0])), views=2) is None
    assert isinstance(Classification().inference_model(module.net, LABELS[:3], SIZE), InferenceModel)
