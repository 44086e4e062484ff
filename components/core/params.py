"""params.yaml, parsed once at the edge into typed models. Components take explicit arguments.

The shipped `params.yaml` is the one source of defaults: every section and key is required here, so
a file missing one is an error that names it, never a silent fallback to a value written twice.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.core.effort import EffortCosts, MaskCosts
from components.core.errors import SettingsError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectParams(_Section):
    """Which Label Studio project the loop works on, and its labeling config.

    With `id`, flywheel attaches to that existing project: its labeling config, task type and label set
    are read from the project itself, and `title` and `config` are not used. Without it, the project
    is found by `title`, and `config` (a local XML) is what a new one is created from and what an
    existing one must match.
    """

    title: str = Field(min_length=1)
    config: Path
    id: int | None = Field(default=None, ge=1)


class PhotoDemoParams(_Section):
    """The photo-scale set in place of the digits (`flywheel demo --task ... --photos`), and the keys its
    params differ in from the digits demo's (merged over them)."""

    dataset: str
    params: dict[str, dict[str, Any]]


class TaskDemoParams(_Section):
    """`flywheel demo --task detection|segmentation`: a set built from packaged images, and the keys
    its params differ in (merged over params.yaml into the demo's own params file)."""

    dataset: str
    limit: int = Field(gt=0)
    params: dict[str, dict[str, Any]]
    photo: PhotoDemoParams

    def with_photos(self) -> TaskDemoParams:
        """This demo on the photo-scale set: its dataset, and its params merged over these."""
        merged = {k: dict(v) for k, v in self.params.items()}
        for section, values in self.photo.params.items():
            merged[section] = {**merged.get(section, {}), **values}
        return self.model_copy(update={"dataset": self.photo.dataset, "params": merged})


class DemoParams(_Section):
    """The demo project: a labeled dataset that ships in a package."""

    dataset: str
    limit: int = Field(gt=0)
    detection: TaskDemoParams
    segmentation: TaskDemoParams

    def of(self, task: str, photos: bool = False) -> TaskDemoParams:
        """The demo of a task type other than classification (on the photo-scale set with `photos`)."""
        demo = {"detection": self.detection, "segmentation": self.segmentation}[task]
        return demo.with_photos() if photos else demo


class PollParams(_Section):
    """How the served loop learns of new labels: Label Studio's webhooks, and a slow safety-net poll."""

    webhooks: bool
    safety_net_s: float = Field(gt=0)
    idle_after_s: float = Field(ge=0)
    min_new_annotations: int = Field(ge=1)

    def enough_changes(self, changes: int, has_model: Callable[[], bool]) -> bool:
        """Whether `changes` changed tasks are worth a snapshot: `min_new_annotations` of them; before
        the first model, one is enough (the first snapshot may have too few labels of a class to train
        on, and the save that completes it should bring the first model, not wait for nine more).
        `has_model` is asked only when the answer depends on it."""
        if changes >= self.min_new_annotations:
            return True
        return changes >= 1 and not has_model()


class DataParams(_Section):
    rev: str


class SnapshotParams(_Section):
    val_percent: int = Field(ge=1, le=50)


class ValidateParams(_Section):
    min_per_class: int = Field(ge=1)


class ImagesParams(_Section):
    """How task images are read: remote ones are fetched with these bounds, too big ones are refused."""

    fetch_timeout_s: float = Field(gt=0)
    max_bytes: int = Field(gt=0)
    max_pixels: int = Field(gt=0)
    retry_failed_s: float = Field(ge=0)


class TrainParams(_Section):
    architecture: str
    image_size: int = Field(ge=8)
    batch_size: int = Field(ge=1)
    max_epochs: int = Field(ge=1)
    min_steps: int = Field(ge=0)
    max_steps: int = Field(ge=-1)
    patience: int = Field(ge=1)
    lr: float = Field(gt=0)
    augment: bool
    copy_paste: float = Field(ge=0, le=1)
    seed: int
    finetune_steps: int = Field(ge=0)
    finetune_lr: float = Field(gt=0)
    freeze_backbone_below: int = Field(ge=0)
    backbone_lr_scale: float = Field(ge=0)


class PretrainParams(_Section):
    """Self-supervised pretraining of the loop architecture's backbone on every image of the project."""

    enabled: bool
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=2)
    lr: float = Field(gt=0)
    temperature: float = Field(gt=0)
    flip: bool
    max_images: int = Field(ge=2)
    refresh_growth: float = Field(ge=0)
    threads: int = Field(ge=1)


class RegistryParams(_Section):
    # no quotes: MLflow's search filters quote names with them, and cannot escape one inside
    model_name: str = Field(min_length=1, pattern=r"^[^'\"`]+$")
    experiment: str = Field(min_length=1, pattern=r"^[^'\"`]+$")


class PredictParams(_Section):
    batch_size: int = Field(ge=1)
    keep_versions: int = Field(ge=1)
    tidy_after_s: float = Field(ge=0)


class RetrainParams(_Section):
    """Full retrains from scratch: the scheduled one (every architecture, on one process or several, DDP),
    and the background one of the loop's architecture each time the labeled set grew by `growth`."""

    cron: str
    # not "ddp": it re-runs the process's command per device, which inside a flow run is the whole flow
    strategy: Literal["ddp_fork", "ddp_spawn"] = "ddp_fork"
    growth: float = Field(ge=0)
    steps: int | None = Field(ge=1)
    threads: int = Field(ge=1)

    @model_validator(mode="after")
    def _growth_grows(self) -> RetrainParams:
        if 0 < self.growth <= 1:
            raise ValueError(f"retrain.growth is {self.growth}: 0 (off), or more than 1 (2: each time the labeled set doubled)")
        return self

    def due(self, labeled: int, at_last_scratch: int | None) -> bool:
        """Whether a background retrain is due with `labeled` training images, the newest model trained from
        scratch having seen `at_last_scratch` (None: no model was, as far as the tags say)."""
        if not self.growth:
            return False
        return at_last_scratch is None or labeled >= at_last_scratch * self.growth


class ComputeParams(_Section):
    """Where every model runs (training, pretraining, the label check, write-back, serving): one setting,
    resolved by `components.networks.compute.resolve`."""

    accelerator: Literal["cpu", "gpu", "auto"]
    devices: int = Field(ge=1)
    precision: Literal["32-true", "16-mixed", "bf16-mixed"]


class ErrorsParams(_Section):
    """The label error finder: k-fold out-of-fold probabilities ranked by cleanlab."""

    folds: int = Field(ge=2)
    steps: int = Field(ge=1)
    after_idle_s: float = Field(ge=0)


class SelectParams(_Section):
    """Which unlabeled tasks people should label next."""

    batch: int = Field(ge=1)
    candidates: int = Field(ge=1)
    cold_start_below: int = Field(ge=0)


class ReportParams(_Section):
    """The annotation-strategy report."""

    target_accuracy: float = Field(gt=0, le=1)


class StrategyTrainParams(_Section):
    """How `flywheel strategy` trains each strategy's model (fixed steps, no early stopping)."""

    image_size: int = Field(ge=16)
    batch_size: int = Field(ge=1)
    steps: int = Field(ge=1)
    lr: float = Field(gt=0)


class ActionSeconds(_Section):
    """What a person's actions on one suggested object cost, in seconds (the effort-saved figures)."""

    verify: float = Field(gt=0)
    delete: float = Field(ge=0)
    adjust: dict[Literal["boxes", "masks"], float]
    click: float = Field(1.75, gt=0)  # one correction click with the mask assistant

    @model_validator(mode="after")
    def _every_strategy(self) -> ActionSeconds:
        missing = {"boxes", "masks"} - set(self.adjust)
        if missing:
            raise ValueError(f"strategy.seconds_per_action.adjust needs boxes and masks (missing {sorted(missing)})")
        return self


class StrategyParams(_Section):
    """`flywheel strategy`: boxes or masks, compared in annotation hours on the same images."""

    metric: Literal["box_map50", "mask_map50"]
    target: float = Field(gt=0, le=1)
    hours: list[float] = Field(min_length=1)
    held_out: int = Field(ge=1)
    seconds_per_object: dict[Literal["boxes", "masks"], float]
    seconds_per_action: ActionSeconds
    architectures: dict[Literal["boxes", "masks"], str]
    train: StrategyTrainParams
    max_clicks: int = Field(5, ge=0)  # correction clicks a person gives the mask assistant before drawing by hand

    def mask_costs(self) -> MaskCosts:
        """Seconds per action on one mask made with the mask assistant."""
        return MaskCosts(box=self.seconds_per_object["boxes"], verify=self.seconds_per_action.verify,
                         click=self.seconds_per_action.click, draw=self.seconds_per_object["masks"], max_clicks=self.max_clicks)

    def effort_costs(self, strategy: Literal["boxes", "masks"]) -> EffortCosts:
        """Seconds per action on one object when labeling `strategy` with suggestions."""
        action = self.seconds_per_action
        return EffortCosts(draw=self.seconds_per_object[strategy], verify=action.verify,
                           adjust=action.adjust[strategy], delete=action.delete)

    @model_validator(mode="after")
    def _every_strategy(self) -> StrategyParams:
        for key in ("seconds_per_object", "architectures"):
            missing = {"boxes", "masks"} - set(getattr(self, key))
            if missing:
                raise ValueError(f"strategy.{key} needs boxes and masks (missing {sorted(missing)})")
        if any(h <= 0 for h in self.hours):
            raise ValueError("strategy.hours must all be > 0")
        return self


class ProductionParams(_Section):
    """`flywheel serve-model`: the champion behind an HTTP endpoint, and its hard images back to labeling."""

    port: int = Field(gt=0, lt=65536)
    max_batch_size: int = Field(ge=1)
    batch_timeout_ms: float = Field(ge=0)
    reload_s: float = Field(gt=0)
    route_below: float = Field(ge=0, le=1)
    max_routed_per_hour: int = Field(ge=0)
    max_request_bytes: int = Field(gt=0)


class AssistParams(_Section):
    """flywheel as the project's ML backend in Label Studio, under `flywheel serve`."""

    backend: bool
    sam_checkpoint: str | None = None  # a SAM checkpoint (segment-anything's .pth): it answers smart tools instead of GrabCut
    sam_model_type: Literal["vit_h", "vit_l", "vit_b"] = "vit_b"  # the kind of model that checkpoint holds


class Params(_Section):
    """All of params.yaml."""

    project: ProjectParams
    demo: DemoParams
    poll: PollParams
    data: DataParams
    snapshot: SnapshotParams
    validate_: ValidateParams = Field(alias="validate")
    images: ImagesParams
    train: TrainParams
    pretrain: PretrainParams
    architectures: dict[str, dict[str, Any]] = Field(min_length=1)
    registry: RegistryParams
    predict: PredictParams
    retrain: RetrainParams
    compute: ComputeParams
    errors: ErrorsParams
    select: SelectParams
    report: ReportParams
    strategy: StrategyParams
    production: ProductionParams
    assist: AssistParams

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
        SettingsError: The file is missing, is not YAML, or a key is missing, unknown or out of
            range; the message names the key.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise SettingsError(f"No {path} here; run flywheel from the project folder that holds it.") from e
    except yaml.YAMLError as e:
        raise SettingsError(f"{path} is not valid YAML: {' '.join(str(e).split())}. Fix the file and run again.") from e
    if raw is not None and not isinstance(raw, dict):
        raise SettingsError(f"{path} must be a mapping of sections (project:, train:, ...), not {type(raw).__name__}.")
    try:
        return Params.model_validate(raw or {})
    except ValidationError as e:
        missing = [_where(err) for err in e.errors() if err["type"] == "missing"]
        wrong = [f"{_where(err)}: {err['msg']}" for err in e.errors() if err["type"] != "missing"]
        problems = wrong + ([f"missing {', '.join(missing)} (every section and key is required)"] if missing else [])
        raise SettingsError(
            f"{path} is invalid: {'; '.join(problems)}. Fix these keys (the params.yaml that ships with flywheel "
            "has every one, with its default) and run again."
        ) from e


def write_derived_params(base: str | Path, overrides: dict[str, dict[str, Any]], out: Path) -> Params:
    """params.yaml with some keys replaced, written to `out` and validated (e.g. a detection demo's).

    Args:
        base: The params.yaml to start from (every other key comes from it).
        overrides: section -> {key: value} to replace.
        out: Where the merged file goes.
    """
    raw = yaml.safe_load(Path(base).read_text())
    for section, values in overrides.items():
        raw[section] = {**(raw.get(section) or {}), **values}
    # the labeling config is found relative to the params file: point at it from wherever `out` is
    raw["project"]["config"] = str((Path(base).resolve().parent / raw["project"]["config"]).resolve())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# {Path(base).name} with the keys of a demo's params replaced; written by flywheel\n"
                   + yaml.safe_dump(raw, sort_keys=False))
    return load_params(out)


def _where(error: Any) -> str:
    return ".".join(str(part).removesuffix("_") for part in error["loc"]) or "params"
