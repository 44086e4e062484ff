"""Models pickled before a module moved load through the table of moved modules (`core.compat`)."""

from __future__ import annotations

import importlib
import io

import pytest
import torch

from components.core import compat
from components.networks.architectures import build_network
from components.tasks.classification import InferenceModel


def test_every_moved_module_and_class_exists_where_the_table_says():
    for old, new in compat.MOVED_MODULES.items():
        assert importlib.util.find_spec(old) is None, f"{old} still exists: drop it from MOVED_MODULES or the module"
        importlib.import_module(new)
    for (_, name), new in compat.MOVED_CLASSES.items():
        assert hasattr(importlib.import_module(new), name)


def pickled_at(model: torch.nn.Module, now: str, then: str) -> bytes:
    """`model` pickled as a version from before the move would be: its class under `then` instead of `now`."""
    buffer = io.BytesIO()
    torch.save(model, buffer, pickle_protocol=2, _use_new_zipfile_serialization=False)  # a plain pickle stream, classes named as text
    data = buffer.getvalue()
    assert now.encode() + b"\n" in data
    return data.replace(now.encode() + b"\n", then.encode() + b"\n")


@pytest.mark.parametrize("architecture", ["small_cnn", "conv4"])
def test_a_network_pickled_under_its_old_module_loads_and_answers_the_same(architecture):
    net = build_network(architecture, 3, {}).eval()
    old = pickled_at(net, "components.networks.architectures", "components.architectures")
    with pytest.raises(ModuleNotFoundError):
        torch.load(io.BytesIO(old), weights_only=False)  # what a plain unpickler does with the old path
    loaded = torch.load(io.BytesIO(old), pickle_module=compat, weights_only=False).eval()
    images = torch.rand(2, 3, 16, 16)
    assert type(loaded) is type(net)
    assert torch.equal(loaded(images), net(images))


def test_the_classification_model_pickled_before_task_types_existed_loads():
    model = InferenceModel(build_network("small_cnn", 2, {}), ["cat", "dog"], 16).eval()
    old = pickled_at(model, "components.tasks.classification", "components.training")
    loaded = torch.load(io.BytesIO(old), pickle_module=compat, weights_only=False)
    assert isinstance(loaded, InferenceModel) and loaded.labels == model.labels


def test_a_box_model_pickled_under_the_old_module_paths_loads():
    from components.networks.detectors import build_detector
    from components.tasks.detection import DetectionModel

    model = DetectionModel(build_detector("centernet", 2, {}), ["a", "b"], 32).eval()
    old = pickled_at(model, "components.networks.detectors", "components.detectors")
    loaded = torch.load(io.BytesIO(old), pickle_module=compat, weights_only=False)
    assert type(loaded.net) is type(model.net) and loaded.labels == model.labels
