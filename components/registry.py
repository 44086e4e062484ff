"""The model registry (MLflow): log every trained model, register it, and move `champion` fairly.

A model is logged with MLflow's pytorch flavor (pickle serialization, so it loads back as the same
class), a signature and an input example, and registered under one name. The `champion` alias
moves when the new model does better than the current champion on the *same* validation set (see
`promote_if_better`). A TorchScript export is logged beside each model.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from components.training import InferenceModel, evaluate

CHAMPION = "champion"


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
class Promotion:
    """The outcome of comparing a new model with the champion on the same validation set."""

    candidate: RegisteredModel
    promoted: bool
    candidate_accuracy: float
    champion_accuracy: float | None
    champion: RegisteredModel


class ModelRegistry:
    """MLflow's model registry for one registered model name.

    Args:
        tracking_uri: The MLflow tracking server.
        name: The registered model name (params.yaml registry.model_name).
    """

    def __init__(self, tracking_uri: str, name: str):
        self.tracking_uri = tracking_uri
        self.name = name
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def register(self, model: InferenceModel, run_id: str) -> RegisteredModel:
        """Log `model` into its training run (pytorch flavor + TorchScript export) and register it."""
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        example = torch.rand(2, 3, model.image_size, model.image_size)
        model.eval()
        with torch.no_grad():
            output = model(example)
        signature = infer_signature(example.numpy(), output.numpy())
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                serialization_format="pickle",
                signature=signature,
                input_example=example.numpy(),
                registered_model_name=self.name,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
            with tempfile.TemporaryDirectory() as folder:
                scripted = Path(folder) / "model.torchscript.pt"
                torch.jit.trace(model, example).save(str(scripted))
                (Path(folder) / "labels.json").write_text(json.dumps(model.labels))
                mlflow.log_artifact(str(scripted), artifact_path="export")
                mlflow.log_artifact(str(Path(folder) / "labels.json"), artifact_path="export")
        version = int(info.registered_model_version)
        return RegisteredModel(name=self.name, version=version, run_id=run_id)

    def champion(self) -> RegisteredModel | None:
        """The model version under the `champion` alias, if any."""
        try:
            mv = self.client.get_model_version_by_alias(self.name, CHAMPION)
        except MlflowException:
            return None
        return RegisteredModel(name=self.name, version=int(mv.version), run_id=mv.run_id)

    def load(self, model: RegisteredModel) -> InferenceModel:
        """Load a registered version back as the same `InferenceModel` class."""
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        return mlflow.pytorch.load_model(model.uri, map_location="cpu").eval()

    def _trained_images(self, run_id: str) -> float:
        return self.client.get_run(run_id).data.metrics.get("train_images", 0.0)

    def promote_if_better(
        self,
        candidate: RegisteredModel,
        candidate_model: InferenceModel,
        val_images: torch.Tensor,
        val_targets: torch.Tensor,
    ) -> Promotion:
        """Move `champion` to `candidate` if it does better than the current champion on this validation set.

        The champion is re-evaluated on the candidate's validation set, so both are judged on the
        same images. A candidate trained on more labeled images than the champion (the loop's next
        model) replaces it unless it is clearly worse: it gets more of these images wrong that the
        champion gets right by more than two standard deviations of that paired difference
        (McNemar). Tiny early validation sets would otherwise keep a stale champion for many
        iterations. A candidate trained on no more data (another architecture on the same
        snapshot) must beat it: higher accuracy, or equal accuracy and lower log-loss. A champion
        trained for another label set is replaced.
        """
        num_classes = len(candidate_model.labels)
        scores = evaluate(candidate_model, val_images, val_targets, num_classes)
        accuracy = scores["accuracy"]
        current = self.champion()
        champion_accuracy = None
        champion_scores: dict[str, Any] | None = None
        if current is not None:
            champion_model = self.load(current)
            if list(champion_model.labels) == list(candidate_model.labels):
                champion_scores = evaluate(champion_model, val_images, val_targets, num_classes)
                champion_accuracy = champion_scores["accuracy"]
        if champion_scores is None:
            promoted = True
        elif self._trained_images(candidate.run_id) > self._trained_images(current.run_id):
            champion_only = int(((champion_scores["predicted"] == val_targets) & (scores["predicted"] != val_targets)).sum())
            candidate_only = int(((scores["predicted"] == val_targets) & (champion_scores["predicted"] != val_targets)).sum())
            promoted = champion_only - candidate_only <= 2 * math.sqrt(champion_only + candidate_only)
        else:
            promoted = (accuracy, -scores["log_loss"]) > (champion_scores["accuracy"], -champion_scores["log_loss"])
        if promoted:
            self.client.set_registered_model_alias(self.name, CHAMPION, str(candidate.version))
        self.client.set_model_version_tag(self.name, str(candidate.version), "val_accuracy", f"{accuracy:.4f}")
        return Promotion(
            candidate=candidate,
            promoted=promoted,
            candidate_accuracy=accuracy,
            champion_accuracy=champion_accuracy,
            champion=candidate if promoted else current,  # type: ignore[arg-type]
        )
