"""Plain `nn.Module` architectures, built by name from params.yaml's `architectures` section.

Each builder takes the number of classes plus its own options and returns a network that maps a
batch of RGB images (N, 3, H, W) to logits (N, num_classes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from components.core.errors import SettingsError


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head: trains in seconds on CPU, fine for small images."""

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.25):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ConvNet4(nn.Module):
    """Four conv blocks down to 3x3 and a linear head: a receptive field that covers a whole small
    image, so its features say what the image shows (a 28-px digit). Measured against SmallCNN on
    MNIST (bench/RESULTS.md): better from scratch at 20 labels, and far better after self-supervised
    pretraining. `features` is the backbone that pretraining teaches (images -> one vector each)."""

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.25):
        super().__init__()

        def block(inputs: int, outputs: int) -> list[nn.Module]:
            return [nn.Conv2d(inputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU()]

        self.features = nn.Sequential(
            *block(3, width), nn.MaxPool2d(2), *block(width, 2 * width), nn.MaxPool2d(2),
            *block(2 * width, 4 * width), nn.MaxPool2d(2), *block(4 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _resnet18(num_classes: int, pretrained: bool = False) -> nn.Module:
    """torchvision's ResNet-18; `pretrained` loads ImageNet weights (needs internet the first time)."""
    from torchvision.models import ResNet18_Weights, resnet18

    net = resnet18(weights=ResNet18_Weights.DEFAULT if pretrained else None)
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    return net


class Networks(dict[str, Callable[..., nn.Module]]):
    """Networks of one kind (classifiers, detectors, segmenters) by the names params.yaml gives them:
    name -> a builder taking `num_classes` and that network's options.

    Args:
        kind: What it holds, for messages ("architecture", "detector").
        builders: Name -> builder.
    """

    def __init__(self, kind: str, builders: Mapping[str, Callable[..., nn.Module]]):
        super().__init__(builders)
        self.kind = kind

    def build(self, name: str, num_classes: int, options: dict[str, Any] | None = None) -> nn.Module:
        """Build the network `name` with params.yaml's options for it.

        Args:
            name: A key of params.yaml's `architectures`.
            num_classes: Size of the label set.
            options: `architectures.<name>` from params.yaml.

        Raises:
            SettingsError: Unknown name or option.
        """
        if name not in self:
            raise SettingsError(f"Unknown {self.kind} {name!r} in params.yaml; known: {sorted(self)}.")
        try:
            return self[name](num_classes=num_classes, **(options or {}))
        except TypeError as e:
            raise SettingsError(f"architectures.{name} in params.yaml has an option it does not take: {e}.") from e


ARCHITECTURES = Networks("architecture", {
    "small_cnn": SmallCNN,
    "conv4": ConvNet4,
    "resnet18": _resnet18,
})
build_network = ARCHITECTURES.build  # a classifier, by its name in params.yaml
