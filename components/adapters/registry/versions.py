"""What a registered model version is (`RegisteredModel`), the recipe that rebuilds one from its
weights (`Recipe`), and where a version keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import torch
from torch import nn

from components.tasks import task_type_named

CHAMPION = "champion"
WEIGHTS = PurePosixPath("flywheel/weights.pt")  # the inference model's state dict
RECIPE = PurePosixPath("flywheel/recipe.json")  # what rebuilds it (`Recipe`)


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model version.

    Attributes:
        name: Registered model name.
        version: Its version number.
        run_id: The MLflow run that trained it.
        model_version: The label written on its Label Studio predictions ("<name>-v<version>").
    """

    name: str
    version: int
    run_id: str

    @property
    def model_version(self) -> str:
        return f"{self.name}-v{self.version}"

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class Recipe:
    """What rebuilds a registered model from its weights: its task type, architecture (params.yaml's
    name and options), labels and input size; for boxes and masks, the score its objects are
    suggested from (`shown_from`, chosen on the validation set when it was registered; None: the default)."""

    task: str
    architecture: str
    options: dict[str, Any]
    labels: list[str]
    image_size: int
    shown_from: float | None = None

    def build(self, weights: dict[str, torch.Tensor]) -> nn.Module:
        """The inference model with these weights (strictly: a misfit is an error, never half-loaded)."""
        task = task_type_named(self.task)
        # the weights follow: no download, and no local weights file (it may be gone, or on another machine)
        options = {**self.options, **{k: v for k, v in (("pretrained", False), ("weights", None)) if k in self.options}}
        net = task.module(self.architecture, options, self.labels, lr=1e-3, augment=False).net
        model = task.inference_model(net, self.labels, self.image_size)
        model.load_state_dict(weights)
        if self.shown_from is not None:
            model.shown_from = self.shown_from
        return model.eval()
