"""params.yaml, parsed once at the edge into typed models. Components take explicit arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.errors import SettingsError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectParams(_Section):
    """Which Label Studio project the loop works on, and its labeling config."""

    title: str = Field(min_length=1)
    config: Path


class DemoParams(_Section):
    """The demo project: a labeled dataset that ships in a package."""

    dataset: str = "mnist"
    limit: int = Field(default=1000, gt=0)


class PollParams(_Section):
    interval_s: float = Field(default=10, gt=0)
    min_new_annotations: int = Field(default=10, ge=1)


class DataParams(_Section):
    rev: str = "latest"


class SnapshotParams(_Section):
    val_percent: int = Field(default=20, ge=1, le=50)


class ValidateParams(_Section):
    min_per_class: int = Field(default=2, ge=1)


class TrainParams(_Section):
    architecture: str = "small_cnn"
    image_size: int = Field(default=28, ge=8)
    batch_size: int = Field(default=64, ge=1)
    max_epochs: int = Field(default=100, ge=1)
    min_steps: int = Field(default=400, ge=0)
    patience: int = Field(default=3, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    augment: bool = True
    seed: int = 0


class RegistryParams(_Section):
    model_name: str = "flywheel-classifier"
    experiment: str = "flywheel"


class PredictParams(_Section):
    batch_size: int = Field(default=256, ge=1)


class RetrainParams(_Section):
    cron: str = "0 3 * * *"


class ErrorsParams(_Section):
    """The label error finder: k-fold out-of-fold probabilities ranked by cleanlab."""

    folds: int = Field(default=5, ge=2)
    steps: int = Field(default=400, ge=1)
    interval_s: float = Field(default=600, gt=0)


class SelectParams(_Section):
    """Which unlabeled tasks people should label next."""

    batch: int = Field(default=50, ge=1)
    candidates: int = Field(default=4, ge=1)


class ReportParams(_Section):
    """The annotation-strategy report."""

    target_accuracy: float = Field(default=0.9, gt=0, le=1)


class Params(_Section):
    """All of params.yaml."""

    project: ProjectParams
    demo: DemoParams = DemoParams()
    poll: PollParams = PollParams()
    data: DataParams = DataParams()
    snapshot: SnapshotParams = SnapshotParams()
    validate_: ValidateParams = Field(default=ValidateParams(), alias="validate")
    train: TrainParams = TrainParams()
    architectures: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"small_cnn": {}})
    registry: RegistryParams = RegistryParams()
    predict: PredictParams = PredictParams()
    retrain: RetrainParams = RetrainParams()
    errors: ErrorsParams = ErrorsParams()
    select: SelectParams = SelectParams()
    report: ReportParams = ReportParams()

    @model_validator(mode="after")
    def _known_architecture(self) -> Params:
        if self.train.architecture not in self.architectures:
            raise ValueError(
                f"train.architecture {self.train.architecture!r} is not one of architectures {sorted(self.architectures)}"
            )
        return self


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml.

    Raises:
        SettingsError: The file is missing, is not YAML, or a key is unknown or out of range; the
            message names the key.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise SettingsError(f"No {path} here; run flywheel from the project folder that holds it.") from e
    except yaml.YAMLError as e:
        raise SettingsError(f"{path} is not valid YAML: {e}. Fix the file and run again.") from e
    try:
        return Params.model_validate(raw or {})
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'params'}: {err['msg']}" for err in e.errors()
        )
        raise SettingsError(f"{path} is invalid: {problems}. Fix these keys and run again.") from e
