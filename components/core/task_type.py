"""The interface every task type implements, and the plain records that cross it.

The loop (`iteration`, `registry`, `selection`, `label_errors`, `report`, the simulator) calls only
this interface; what differs between classification and detection lives behind it, one module per
task type. A manifest row's `label` cell holds a task type's *target* as text: a class name for
classification, the boxes (with masks for segmentation) as JSON. Only the task type reads or writes it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import nn

from components.core.conversions import Annotation
from components.core.effort import Edits
from components.core.labeling_config import LabelingConfig


@dataclass(frozen=True)
class Scores:
    """How a model did on a validation set.

    Attributes:
        score: The one number promotion compares (higher is better): accuracy, mAP@0.5, ...
        tiebreak: Compared when `score` ties (higher is better): minus log-loss, mAP@0.5:0.95, ...
        correct: Per validation item, whether the model got it entirely right: paired between two
            models on the same items, it decides whether a candidate is clearly worse (McNemar).
        metrics: Everything worth logging, by name (`score` among them under the task's `metric`).
        per_class: Class -> the task's per-class score (F1, AP).
        confusion: Rows = labeled class, columns = predicted (classification only).
    """

    score: float
    tiebreak: float
    correct: np.ndarray
    metrics: dict[str, float]
    per_class: dict[str, float] = field(default_factory=dict)
    confusion: np.ndarray | None = None


@dataclass(frozen=True)
class Reading:
    """What a model says about one image, ready for Label Studio.

    Attributes:
        target: The model's answer as a target (the same text a manifest holds).
        result: The answer as a Label Studio result (regions carry their own scores).
        confidence: How sure the model is of the whole answer, in [0, 1]: the score a person sees.
        uncertainty: What "Label next" ranks by, in [0, 1] (1 = learn most from labeling it).
    """

    target: str
    result: list[dict[str, Any]]
    confidence: float
    uncertainty: float


class TaskType(ABC):
    """One kind of labeling: how its annotations become training targets, how it trains and is
    judged, and how its model's output goes back to Label Studio."""

    name: str
    metric: str  # the promotion score's name, logged as `best_val_<metric>`
    metric_title: str  # how the report calls it ("validation accuracy", "box mAP@0.5")
    secondary_metric: str  # a second score shown beside it ("f1_macro", "map50_95"), a key of `Scores.metrics`
    count_noun: str  # what a class count counts ("images", "boxes")
    drawn_as: str | None = None  # how its objects are drawn, a key of `strategy.seconds_per_object` ("boxes", "masks")
    per_class_metric: str  # the per-class score's short name ("f1", "ap")
    keeps_best_checkpoint: bool  # keep the epoch of lowest validation loss (True) or the last weights

    # --- Label Studio <-> targets -------------------------------------------------------------

    @abstractmethod
    def target_of(self, annotation: Annotation, config: LabelingConfig, task_id: int, image: Path) -> str:
        """An annotation -> the training target, as the manifest's text.

        Raises:
            AnnotationError: The annotation cannot be trained on; the message names the task and says
                what to do.
        """

    @abstractmethod
    def classes_in(self, target: str) -> list[str]:
        """The classes a target holds (one per image, or one per box), for class counts."""

    @abstractmethod
    def result_of(self, target: str, config: LabelingConfig) -> list[dict[str, Any]]:
        """A target -> a Label Studio result: what a person's annotation (or a suggestion) holds."""

    @abstractmethod
    def agree(self, predicted: Sequence[Mapping[str, Any]], annotated: Sequence[Mapping[str, Any]], config: LabelingConfig) -> bool | None:
        """Whether an annotation kept a suggestion unchanged (both Label Studio results); None when the
        annotation is not one this task type reads."""

    def edits(self, predicted: Sequence[Mapping[str, Any]], annotated: Sequence[Mapping[str, Any]], config: LabelingConfig) -> Edits | None:
        """What a person did, object by object, to turn a suggestion into their annotation (both Label
        Studio results); None when this task type has no objects or cannot read one of them."""
        return None

    # --- training -----------------------------------------------------------------------------

    @abstractmethod
    def builds(self, architecture: str) -> bool:
        """True when `architecture` (a key of params.yaml's `architectures`) is one this task type trains."""

    @abstractmethod
    def datamodule(
        self, folder: Path, manifest: pd.DataFrame, labels: Sequence[str], image_size: int, batch_size: int, augment: bool
    ) -> L.LightningDataModule:
        """The snapshot's train and val splits; after `setup()`, `.val_set` is what `evaluate` takes."""

    @abstractmethod
    def module(
        self, architecture: str, options: dict[str, Any], labels: Sequence[str], lr: float, augment: bool, copy_paste: float = 0.0
    ) -> L.LightningModule:
        """The LightningModule that trains `architecture` (its network is `.net`) and logs `val_loss`;
        with `augment`, objects are pasted between the images of a batch with chance `copy_paste` (task
        types with objects; classification has none)."""

    @abstractmethod
    def inference_model(self, net: nn.Module, labels: Sequence[str], image_size: int) -> nn.Module:
        """What is logged and served: preprocessing + network + output decoding, images in [0, 1]."""

    @abstractmethod
    def evaluate(self, model: nn.Module, val_set: Any, labels: Sequence[str]) -> Scores:
        """Score an inference model on a validation set from `datamodule`."""

    def operating_point(self, model: nn.Module, val_set: Any, labels: Sequence[str], costs: Any) -> tuple[float, float | None] | None:
        """For task types of objects: the score from which objects are suggested that saves a person most
        seconds on the validation set (`costs`: `EffortCosts`), and the effort saved there. None: the
        task type has no such choice (classification suggests its one label)."""
        return None

    @abstractmethod
    def figures(self, scores: Scores, labels: Sequence[str], title: str) -> dict[str, Any]:
        """Matplotlib figures worth logging with a trained model, by file name."""

    # --- inference ----------------------------------------------------------------------------

    @abstractmethod
    def read(
        self, model: nn.Module, images: torch.Tensor, config: LabelingConfig, sizes: Sequence[tuple[int, int]] | None = None
    ) -> tuple[list[Reading], np.ndarray]:
        """Run an inference model on a batch (N, 3, S, S) in [0, 1].

        `sizes` are the original images' (width, height), for answers that must be drawn at the
        image's own size (a brush mask); None means the model's input size.

        Returns:
            One reading per image, and (N, D) embeddings (what selection measures "near" with).
        """

    # --- label quality ------------------------------------------------------------------------

    @abstractmethod
    def find_label_errors(self, check: CrossValidation) -> tuple[pd.DataFrame, float]:
        """Rank every label of a snapshot by how likely it is wrong, from out-of-fold predictions.

        Args:
            check: The snapshot, the label set, how to train one fold, k, the seed and progress.

        Returns:
            The table (`label_errors.TABLE_COLUMNS`, lowest quality first; `suggested` is a target)
            and the out-of-fold score against the given labels.
        """


@dataclass(frozen=True)
class CrossValidation:
    """What the error finder hands a task type: a snapshot's labels to cross-validate.

    Args:
        folder: The snapshot's folder.
        manifest: The snapshot's manifest.
        labels: The label set.
        train_fold: Trains an inference model on some of the manifest's rows.
        folds: k of the k-fold.
        seed: Fold assignment.
        progress: Told "fold i/k".
    """

    folder: Path
    manifest: pd.DataFrame
    labels: Sequence[str]
    train_fold: Callable[[pd.DataFrame], nn.Module]
    folds: int
    seed: int
    progress: Callable[[str], None] = lambda message: None

    def unpacked(self) -> tuple[Path, pd.DataFrame, Sequence[str], Callable[[pd.DataFrame], nn.Module], int, int, Callable[[str], None]]:
        """(folder, manifest, labels, train_fold, folds, seed, progress)."""
        return self.folder, self.manifest, self.labels, self.train_fold, self.folds, self.seed, self.progress


def ranked_label_table(
    manifest: pd.DataFrame,
    suggested: Sequence[str],
    quality: Sequence[float],
    suspected: Sequence[bool],
    confidence: Sequence[float],
) -> pd.DataFrame:
    """The error finder's table (`label_errors.TABLE_COLUMNS`): one row per manifest row with the
    out-of-fold suggestion (a target), its confidence, the label's quality and whether it is a
    suspect, lowest quality first (task id breaks ties), ranked from 1."""
    table = pd.DataFrame({
        "task_id": manifest["task_id"].to_numpy(),
        "label": manifest["label"].to_numpy(),
        "suggested": list(suggested),
        "quality": np.round(np.asarray(quality, dtype=float), 4),
        "suspected": np.asarray(suspected, dtype=bool),
        "suggested_probability": np.round(np.asarray(confidence, dtype=float), 4),
        "image": manifest["image"].to_numpy(),
    })
    table = table.sort_values(["quality", "task_id"], kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table
