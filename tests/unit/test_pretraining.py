"""Pure parts of learning from every image: when to pretrain again, what to pretrain on, the cold-start
ranking, and a backbone that is kept frozen or trained slower."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.networks.architectures import build_network
from components.learning.pretraining import refresh_due, sample
from components.networks.backbones import backbone_of, load_backbone
from components.learning.selection import rank_typical
from components.tasks.classification import Classification
from components.learning.training import Backbone, FrozenBackbone, start_from_backbone

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("pool", "seen", "growth", "due"),
    [(100, None, 0.25, True), (1, None, 0.25, False), (125, 100, 0.25, False), (126, 100, 0.25, True), (100, 100, 0.0, False)],
)
def test_refresh_due_once_the_pool_grew_by_the_share(pool, seen, growth, due):
    assert refresh_due(pool, seen, growth) is due


def test_sample_keeps_every_image_up_to_the_cap_then_a_seeded_draw():
    assert list(sample(5, 10, seed=0)) == [0, 1, 2, 3, 4]
    drawn = sample(1000, 10, seed=3)
    assert len(set(drawn)) == 10 and list(drawn) == sorted(drawn) and drawn == sample(1000, 10, seed=3)


def _clusters(rng: np.random.Generator, count: int = 5, each: int = 40) -> tuple[np.ndarray, np.ndarray]:
    centers = rng.normal(size=(count, 8)) * 5
    points = np.concatenate([c + rng.normal(size=(each, 8)) * 0.3 for c in centers])
    return points, np.repeat(np.arange(count), each)


def test_cold_start_picks_one_typical_image_per_cluster():
    points, cluster = _clusters(np.random.default_rng(0))
    order = rank_typical(points, np.empty((0, 8)), batch=5)
    assert sorted(order.tolist()) == list(range(len(points)))  # a full ranking
    first = order[:5]
    assert sorted(cluster[first].tolist()) == [0, 1, 2, 3, 4]
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    for j in first:  # typical: nearer its cluster's centre than most of its cluster
        mates = unit[cluster == cluster[j]]
        spread = np.linalg.norm(mates - mates.mean(0), axis=1)
        assert np.linalg.norm(unit[j] - mates.mean(0)) <= np.median(spread)


def test_cold_start_goes_to_clusters_nobody_labeled_first():
    points, cluster = _clusters(np.random.default_rng(1))
    labeled = np.concatenate([points[cluster == c][:3] for c in (0, 1, 2)])
    unlabeled = np.concatenate([points[cluster == c][3:] for c in range(5)])
    of = np.concatenate([cluster[cluster == c][3:] for c in range(5)])
    first = rank_typical(unlabeled, labeled, batch=2)[:2]
    assert sorted(of[first].tolist()) == [3, 4]


def test_cold_start_of_nothing_is_empty():
    assert rank_typical(np.empty((0, 4)), np.empty((0, 4)), batch=3).tolist() == []


def test_a_frozen_backbone_stays_as_pretrained_and_an_unfrozen_one_learns_slower():
    net = build_network("conv4", 3, {"width": 4})
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in backbone_of(net).state_dict().items()}
    module = Classification().module("conv4", {"width": 4}, ["a", "b", "c"], 0.01, False)
    callbacks = start_from_backbone(module, Backbone(state, "run", frozen=True, lr_scale=0.1))
    assert [type(c) for c in callbacks] == [FrozenBackbone]
    assert not any(p.requires_grad for p in backbone_of(module.net).parameters())
    assert all(torch.equal(backbone_of(module.net).state_dict()[k], v) for k, v in state.items())
    slower = Classification().module("conv4", {"width": 4}, ["a", "b", "c"], 0.01, False)
    assert start_from_backbone(slower, Backbone(state, "run", frozen=False, lr_scale=0.1)) == []
    assert sorted(g["lr"] for g in slower.configure_optimizers().param_groups) == pytest.approx([0.001, 0.01])


def test_weights_of_another_shape_are_not_loaded():
    net = build_network("conv4", 3, {"width": 4})
    other = backbone_of(build_network("conv4", 3, {"width": 8})).state_dict()
    before = {k: v.clone() for k, v in backbone_of(net).state_dict().items()}
    assert load_backbone(net, other) is False
    assert all(torch.equal(backbone_of(net).state_dict()[k], v) for k, v in before.items())
    assert load_backbone(build_network("resnet18", 3), other) is False  # no `features` backbone


def test_the_dense_objective_compares_the_same_place_of_the_image_in_both_crops():
    """A wrong correspondence would train the trunk on noise without a sign: each point is checked
    against the image it came from, through crops, resizes and flips."""
    import torch.nn.functional as F

    from components.learning.dense import CropPairs, correspondences, dense_module
    from components.networks.detectors import CenterNet

    size = 64
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    image = torch.stack([xs / size, ys / size, torch.zeros_like(xs)])  # each pixel says where it is
    pairs = CropPairs(image[None], flip=True)
    pairs.photometric = lambda view: view  # geometry only, for this check
    torch.manual_seed(3)
    views, wheres = zip(*(pairs._view(image) for _ in range(8)), strict=True)
    first, second = torch.stack(views[:4]), torch.stack(views[4:])
    at_first, at_second, overlaps = correspondences(torch.stack(wheres[:4]), torch.stack(wheres[4:]), size)
    assert overlaps.any() and bool(torch.stack(wheres)[:, 4].any())  # a flip among them
    seen_first = F.grid_sample(first, at_first[:, :, None, :], align_corners=False)[..., 0]
    seen_second = F.grid_sample(second, at_second[:, :, None, :], align_corners=False)[..., 0]
    assert (seen_first - seen_second)[overlaps].abs().max() < 2.5 / size  # the same pixel, to a resize's blur

    trunk = CenterNet(3, width=4).features
    module = dense_module(trunk, size, lr=1e-3, temperature=0.2)
    batch = (first, second, torch.stack(wheres[:4]), torch.stack(wheres[4:]))
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and trunk.stem[0][0].weight.grad.abs().sum() > 0
