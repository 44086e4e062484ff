"""Pretrained weights for boxes, offline: torchvision's own loader reads a file put where it looks
(the real loading code, a file the test makes), or a local file named in params.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components.core.errors import SettingsError
from components.networks.detectors import DETECTORS, build_detector

pytestmark = pytest.mark.model
SIZE = 64


@pytest.fixture()
def torch_cache(tmp_path, monkeypatch) -> Path:
    """torch's hub cache in a temporary folder: where torchvision's weights API looks before downloading."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def _targets() -> list[dict[str, torch.Tensor]]:
    return [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
            {"boxes": torch.tensor([[20.0, 20.0, 50.0, 60.0]]), "labels": torch.tensor([0])}]


def test_faster_rcnn_with_coco_weights_loads_them_from_torchvisions_cache_and_trains_a_step(torch_cache):
    from torchvision.models.detection import FasterRCNN_MobileNet_V3_Large_FPN_Weights, fasterrcnn_mobilenet_v3_large_fpn

    from components.tasks.detection import Detection, DetectionModel

    coco = FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1
    torch.manual_seed(1)
    made = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    torch.save(made, torch_cache / Path(coco.url).name)  # as a first download would have left it

    net = build_detector("fasterrcnn_mobilenet", 3, {"pretrained": True})
    loaded = net.state_dict()
    key = "detector.backbone.body.0.0.weight"
    assert torch.equal(loaded[key], made[key[len("detector."):]])  # the file's weights, not a fresh draw
    assert net.detector.roi_heads.box_predictor.cls_score.out_features == 4  # 3 classes and the background

    module = Detection().module("fasterrcnn_mobilenet", {"pretrained": True}, ["a", "b", "c"], 1e-3, augment=False)
    loss = module.training_step((torch.rand(2, 3, SIZE, SIZE), _targets()), 0)
    loss.backward()
    assert torch.isfinite(loss) and module.net.detector.roi_heads.box_predictor.cls_score.weight.grad is not None
    model = DetectionModel(module.net.eval(), ["a", "b", "c"], SIZE)
    rows, embeddings = model.detections_and_embeddings(torch.rand(2, 3, SIZE, SIZE))
    assert rows.shape == (2, 50, 6) and embeddings.shape[0] == 2 and not model.exports_torchscript
    assert rows[..., 5].max() < 3


def test_a_teams_own_checkpoint_is_read_from_the_file_params_yaml_names(tmp_path):
    own = build_detector("fasterrcnn_mobilenet", 2, {})
    path = tmp_path / "ours.pt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in own.state_dict().items()}}, path)  # as a Lightning checkpoint holds it
    again = build_detector("fasterrcnn_mobilenet", 2, {"weights": str(path)})
    theirs, mine = own.state_dict(), again.state_dict()
    assert all(torch.equal(theirs[k], mine[k]) for k in mine if k in theirs) and len(set(mine) & set(theirs)) > 250
    assert type(dict(again.detector.backbone.body.named_modules())["0.1"]).__name__ == "FrozenBatchNorm2d"  # pretrained statistics kept
    with pytest.raises(SettingsError, match="fit 0 of the network's"):
        torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pt")
        build_detector("fasterrcnn_mobilenet", 2, {"weights": str(tmp_path / "other.pt")})
    with pytest.raises(SettingsError, match=r"architectures.fasterrcnn_mobilenet.weights is '.*missing.pt', which is not a file"):
        build_detector("fasterrcnn_mobilenet", 2, {"weights": str(tmp_path / "missing.pt")})


def test_centernet_on_an_imagenet_resnet18_reads_torchvisions_file_and_trains(torch_cache):
    from torchvision.models import ResNet18_Weights, resnet18

    torch.manual_seed(2)
    made = resnet18(weights=None).state_dict()
    torch.save(made, torch_cache / Path(ResNet18_Weights.IMAGENET1K_V1.url).name)
    net = build_detector("centernet", 3, {"backbone": "resnet18", "pretrained": True, "head_width": 16})
    assert torch.equal(net.features.layer1[0].conv1.weight, made["layer1.0.conv1.weight"])
    outputs = net(torch.rand(2, 3, SIZE, SIZE))
    loss = net.loss(outputs, _targets())
    loss.backward()
    assert outputs["heatmap"].shape == (2, 3, SIZE // 4, SIZE // 4) and torch.isfinite(loss)
    with pytest.raises(SettingsError, match="backbone: resnet18 or mobilenet_v2 with pretrained: true or weights"):
        build_detector("centernet", 3, {"pretrained": True})  # the small trunk has no published weights
    assert "fasterrcnn_mobilenet" in DETECTORS


def test_centernet_on_an_imagenet_mobilenet_v2_reads_the_packaged_weights_offline_and_trains(torch_cache):
    """torch's cache is empty and there is no internet: the ImageNet weights come from the package that
    ships torchvision's own file (requirements-weights.txt), checked against the hash in its name."""
    from torchvision.models import MobileNet_V2_Weights

    from components.networks.pretrained import packaged_copy

    name = Path(MobileNet_V2_Weights.IMAGENET1K_V1.url).name
    assert not (torch_cache / name).exists() and packaged_copy(name) is not None
    imagenet = torch.load(packaged_copy(name), map_location="cpu", weights_only=True)
    net = build_detector("centernet", 3, {"backbone": "mobilenet_v2", "pretrained": True, "head_width": 16})
    assert torch.equal(net.features.stage8[0].conv[0][0].weight, imagenet["features.4.conv.0.0.weight"])
    assert net.features.pretrained and not any(p.requires_grad for p in net.features.stage4.parameters())
    outputs = net(torch.rand(2, 3, SIZE, SIZE))
    loss = net.loss(outputs, _targets())
    loss.backward()
    assert outputs["heatmap"].shape == (2, 3, SIZE // 4, SIZE // 4) and torch.isfinite(loss)
    assert net.features.stage16[0].conv[0][0].weight.grad is not None  # the deeper blocks train
    fresh = build_detector("centernet", 3, {"backbone": "mobilenet_v2"})  # the same trunk from nothing trains whole
    assert not fresh.features.pretrained and all(p.requires_grad for p in fresh.features.parameters())
    assert packaged_copy("resnet18-f37072fd.pth") is None  # only the files a package ships
