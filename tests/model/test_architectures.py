"""Every architecture in params.yaml builds, and one training step runs on CPU (Lightning fast_dev_run)."""

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from components.networks.architectures import ARCHITECTURES, build_network
from components.core.errors import SettingsError
from components.core.params import load_params
from components.tasks.classification import Classifier, InferenceModel, SnapshotDataModule
from tests.conftest import ROOT

pytestmark = pytest.mark.model
PARAMS = load_params(ROOT / "params.yaml")


def test_every_architecture_in_params_belongs_to_a_task_type():
    from components.tasks.classification import Classification
    from components.tasks.detection import Detection
    from components.tasks.segmentation import Segmentation

    task_types = (Classification(), Detection(), Segmentation())
    # each architecture is trained by exactly one task type
    assert all(sum(t.builds(a) for t in task_types) == 1 for a in PARAMS.architectures)


@pytest.mark.parametrize("name", sorted(a for a in PARAMS.architectures if a in ARCHITECTURES))
def test_every_architecture_in_params_builds_and_maps_images_to_logits(name):
    net = build_network(name, num_classes=10, options=PARAMS.architectures[name])
    size = PARAMS.train.image_size
    assert net.eval()(torch.rand(2, 3, size, size)).shape == (2, 10)


def test_unknown_architecture_and_option_say_what_to_fix():
    with pytest.raises(SettingsError, match="Unknown architecture 'vit'"):
        build_network("vit", 3)
    with pytest.raises(SettingsError, match="architectures.small_cnn .* option"):
        build_network("small_cnn", 3, {"depth": 9})


def test_fast_dev_run_on_cpu(tmp_path):
    (tmp_path / "images").mkdir()
    rows = []
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
        rows.append({"task_id": i, "image": f"images/{i}.png", "label": str(i % 2), "split": "val" if i < 2 else "train"})
    data = SnapshotDataModule(tmp_path, pd.DataFrame(rows), ["0", "1"], image_size=16, batch_size=4, augment=True)
    module = Classifier(build_network("small_cnn", 2, {"width": 4}), 2, lr=1e-3, augment=True, architecture="small_cnn")
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.fit(module, datamodule=data)
    probabilities = InferenceModel(module.net, ["0", "1"], 16).eval()(data.val_set.tensors[0])
    assert probabilities.shape == (2, 2)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(2))


@pytest.mark.parametrize("name", sorted(PARAMS.architectures))
def test_every_architecture_exports_with_its_preprocessing_and_rebuilds_from_its_recipe(name, tmp_path):
    """Each exports as its task type allows (classifiers to ONNX and TorchScript, the box models to
    TorchScript), the files answer as the model does, and the registry's recipe rebuilds it."""
    from components.networks.export import Preprocessed, export, exports_onnx
    from components.adapters.registry import Recipe
    from components.tasks import task_type_named

    task = next(t for t in ("classification", "detection", "segmentation") if task_type_named(t).builds(name))
    recipe = Recipe(task, name, dict(PARAMS.architectures[name]), ["a", "b", "c"], 32)
    built = task_type_named(task).module(name, recipe.options, recipe.labels, lr=1e-3, augment=False).net
    model = task_type_named(task).inference_model(built, recipe.labels, recipe.image_size).eval()
    formats = ["onnx", "torchscript"] if exports_onnx(model) else ["torchscript"]
    export(model, formats, tmp_path, "test")
    pixels = torch.randint(0, 256, (2, 40, 36, 3), dtype=torch.uint8)
    with torch.no_grad():
        expected = Preprocessed(model)(pixels)
        expected = expected if isinstance(expected, tuple) else (expected,)
        scripted = torch.jit.load(str(tmp_path / "model.torchscript.pt"))(pixels)
        scripted = scripted if isinstance(scripted, tuple) else (scripted,)
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(scripted, expected, strict=True))
        if "onnx" in formats:
            import onnxruntime

            session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
            assert np.allclose(session.run(None, {"images": pixels.numpy()})[0], expected[0].numpy(), atol=1e-4)
        rebuilt = recipe.build(model.state_dict())
        again = Preprocessed(rebuilt)(pixels)
        again = again if isinstance(again, tuple) else (again,)
        assert all(torch.equal(a, b) for a, b in zip(again, expected, strict=True))
