"""Single-label image classification (`<Choices>`): one class per image.

Target: the class name. Model: any network of `components.networks.architectures` with softmax +
cross-entropy; promotion compares validation accuracy (log-loss breaks ties). A suggestion is one
choice scored by the top-class probability; "Label next" ranks by margin uncertainty; the error
finder is cleanlab's confident learning over out-of-fold class probabilities.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from cleanlab.count import num_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.model_selection import StratifiedKFold
from torch import nn
from torch.utils.data import TensorDataset
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score
from torchvision.transforms import v2

from components.networks.architectures import ARCHITECTURES, build_network
from components.core.conversions import Annotation
from components.core.errors import AnnotationError
from components.core.labeling_config import LabelingConfig
from components.networks.backbones import backbone_of
from components.networks.compute import infer
from components.core.task_type import CrossValidation, Reading, Scores, TaskType, ranked_label_table
from components.learning.training import CachedFeatures, HeadOnFeatures, SplitsDataModule
from components.networks.preprocessing import MEAN, STD, load_images

log = logging.getLogger(__name__)

# --- Label Studio results <-> class names ----------------------------------------------------------


def label_of(annotation: Annotation, config: LabelingConfig, task_id: int) -> str:
    """The single class an annotation chose.

    Raises:
        AnnotationError: The result is empty, has no choice for the config's control tag, picks more
            than one class, or picks a class the config does not know. The message names the task.
    """
    picked = chosen_classes(annotation.result, config)
    if not picked:
        raise AnnotationError(
            f"Task {task_id}: annotation {annotation.id} by {annotation.annotator or 'unknown'} has no "
            f"'{config.from_name}' choice (empty result). Open the task in Label Studio and pick a label, "
            "or skip the task.",
            [task_id],
        )
    if len(picked) > 1:
        raise AnnotationError(
            f"Task {task_id}: annotation {annotation.id} picks {picked}, but this is single-label "
            "classification. Keep one label in Label Studio.",
            [task_id],
        )
    if picked[0] not in config.labels:
        raise AnnotationError(
            f"Task {task_id}: annotation {annotation.id} uses label {picked[0]!r}, which is not in the "
            f"labeling config {list(config.labels)}. Fix the annotation, or add the label to the config.",
            [task_id],
        )
    return picked[0]


def chosen_classes(result: Sequence[Mapping[str, Any]], config: LabelingConfig) -> list[str]:
    """Every class a result picks with the config's control tag."""
    choices = [
        r.get("value", {}).get(config.result_type, [])
        for r in result
        if isinstance(r, Mapping) and r.get("from_name") == config.from_name and isinstance(r.get("value"), Mapping)
    ]
    return [c for chosen in choices if isinstance(chosen, list) for c in chosen]


def choice_result(label: str, config: LabelingConfig) -> list[dict[str, Any]]:
    """The result of picking `label`: what a person's annotation or a model's prediction holds."""
    return [
        {
            "from_name": config.from_name,
            "to_name": config.to_name,
            "type": config.result_type,
            "value": {config.result_type: [label]},
        }
    ]


def readings_of(probabilities: np.ndarray, labels: Sequence[str], config: LabelingConfig) -> list[Reading]:
    """Class probabilities (N, C) -> one reading per image: the likeliest class, its probability as
    the confidence, the margin as the uncertainty."""
    uncertainty = margin_uncertainty(probabilities)
    return [
        Reading(
            target=labels[int(row.argmax())],
            result=choice_result(labels[int(row.argmax())], config),
            confidence=round(float(row.max()), 4),
            uncertainty=float(u),
        )
        for row, u in zip(probabilities, uncertainty, strict=True)
    ]


def margin_uncertainty(probabilities: np.ndarray) -> np.ndarray:
    """1 - (top-1 probability - top-2 probability) per row, in [0, 1]; 1 is a coin toss."""
    if probabilities.shape[1] < 2:
        return np.zeros(len(probabilities))
    top = np.sort(probabilities, axis=1)[:, -2:]
    return 1.0 - (top[:, 1] - top[:, 0])


# --- the model -------------------------------------------------------------------------------------


class InferenceModel(nn.Module):
    """What is logged and served: normalization + network + softmax, images in [0, 1] -> probabilities."""

    def __init__(self, net: nn.Module, labels: Sequence[str], image_size: int):
        super().__init__()
        self.net = net
        self.labels = list(labels)
        self.image_size = image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net((images - MEAN) / STD), dim=1)

    def probabilities_and_embeddings(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities and the network's penultimate features (the input of its last linear
        layer), from one forward pass. The features give selection its sense of "near-duplicate"."""
        last_linear = [m for m in self.net.modules() if isinstance(m, nn.Linear)][-1]
        captured: list[torch.Tensor] = []
        handle = last_linear.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
        try:
            probabilities = self(images)
        finally:
            handle.remove()
        return probabilities, captured[0].flatten(1)


class SnapshotDataModule(SplitsDataModule):
    """A snapshot's splits for classification: images and class indices (`Classifier` jitters them
    when `augment`); arguments as `training.SplitsDataModule`."""

    def _split(self, split: str) -> TensorDataset:
        rows = self.manifest[self.manifest["split"] == split]
        images = load_images([self.snapshot_dir / p for p in rows["image"]], self.image_size)
        targets = torch.tensor([self.labels.index(label) for label in rows["label"]], dtype=torch.long)
        return TensorDataset(images, targets)


class Classifier(L.LightningModule):
    """Trains any network from the architecture registry as a single-label classifier."""

    def __init__(self, net: nn.Module, num_classes: int, lr: float, augment: bool, architecture: str):
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.loss = nn.CrossEntropyLoss()
        self.jitter = v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)) if augment else nn.Identity()
        self.val_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes=num_classes, average="macro")
        self.backbone_lr_scale = 1.0  # a pretrained backbone learns slower than the head (training.fit sets it)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - MEAN) / STD)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        loss = self.loss(self(self.jitter(images)), targets)
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, targets = batch
        logits = self(images)
        self.log("val_loss", self.loss(logits, targets), prog_bar=True, sync_dist=True)
        self.val_accuracy.update(logits, targets)
        self.val_f1.update(logits, targets)

    def on_validation_epoch_end(self) -> None:
        self.log("val_accuracy", self.val_accuracy.compute(), prog_bar=True)
        self.log("val_f1_macro", self.val_f1.compute())
        self.val_accuracy.reset()
        self.val_f1.reset()

    def head_on_features(self, train_set: TensorDataset, views: int) -> tuple[HeadOnFeatures, CachedFeatures] | None:
        """The head alone and what it trains on while the backbone is frozen (`training.fit`): the
        backbone's features of `views` jittered views of each training image (each image its own
        jitter; one view, the image itself, without `augment`), computed once in eval mode, as the
        frozen backbone computes them at every step.

        Returns:
            The head's LightningModule and the cached features with the class indices; None when the
            network is not `head(features(x))` (the whole network then trains as usual).
        """
        backbone, head = backbone_of(self.net), getattr(self.net, "head", None)
        images, targets = train_set.tensors
        if backbone is None or not isinstance(head, nn.Module) or not len(images):
            return None
        seen = [torch.stack([self.jitter(image) for image in images]) for _ in range(views)] if self.hparams.augment else [images]
        was_training = head.training
        backbone.eval()
        head.eval()
        with torch.no_grad():
            features = torch.stack([torch.cat([backbone((chunk - MEAN) / STD) for chunk in view.split(512)]) for view in seen])
            composes = torch.allclose(head(features[0, :1]), self(seen[0][:1]), atol=1e-5)  # another shape of network trains whole
        head.train(was_training)
        if not composes:
            return None
        hparams = {**self.hparams, "cached_views": len(seen)}
        return HeadOnFeatures(head, self.loss, hparams), CachedFeatures(features, targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        lr, backbone = self.hparams.lr, backbone_of(self.net)
        if backbone is None or self.backbone_lr_scale == 1.0:
            return torch.optim.AdamW(self.parameters(), lr=lr)
        inside = {id(p) for p in backbone.parameters()}
        head = [p for p in self.parameters() if id(p) not in inside]
        return torch.optim.AdamW([{"params": head}, {"params": list(backbone.parameters()), "lr": lr * self.backbone_lr_scale}], lr=lr)


def evaluate(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Accuracy, log-loss, macro-F1, per-class F1 and the confusion matrix of probabilities-producing `model`."""
    model.eval()
    with torch.no_grad():
        probabilities = torch.cat([model(chunk) for chunk in images.split(512)]) if len(images) else torch.empty(0, num_classes)
    per_class = MulticlassF1Score(num_classes=num_classes, average=None)(probabilities, targets)
    picked = probabilities[torch.arange(len(targets)), targets] if len(targets) else torch.ones(0)
    return {
        "log_loss": float(-torch.log(picked.clamp_min(1e-7)).mean()) if len(targets) else 0.0,
        "predicted": probabilities.argmax(dim=1),
        "accuracy": float(MulticlassAccuracy(num_classes=num_classes, average="micro")(probabilities, targets)),
        "f1_macro": float(MulticlassF1Score(num_classes=num_classes, average="macro")(probabilities, targets)),
        "f1_per_class": per_class.tolist(),
        "confusion": MulticlassConfusionMatrix(num_classes=num_classes)(probabilities, targets).numpy(),
    }


def confusion_figure(confusion: np.ndarray, labels: Sequence[str], title: str) -> Any:
    """A labeled confusion-matrix heat map (matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(labels), 1 + 0.45 * len(labels)))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("labeled")
    ax.set_title(title)
    for (i, j), count in np.ndenumerate(confusion):
        if count:
            ax.text(j, i, int(count), ha="center", va="center", fontsize=8,
                    color="white" if count > confusion.max() / 2 else "black")
    fig.tight_layout()
    return fig


# --- label quality ---------------------------------------------------------------------------------


def rank_label_errors(manifest: pd.DataFrame, probabilities: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """Every labeled row with its label quality, lowest (most suspect) first.

    Returns:
        Columns `label_errors.TABLE_COLUMNS`: `quality` is cleanlab's self-confidence label quality
        score (0 = surely wrong, 1 = surely right), `suggested` the out-of-fold model's top class, and
        `suspected` marks the lowest-quality labels, as many as cleanlab estimates are wrong
        (`num_label_issues`, confident learning) and whose suggested class differs from the label:
        cleanlab's recommended "count, then rank" use, so the suspects are exactly the top of the
        ranking.
    """
    given = np.array([list(labels).index(label) for label in manifest["label"]])
    quality = get_label_quality_scores(given, probabilities, method="self_confidence")
    count = num_label_issues(given, probabilities) if len(given) else 0
    lowest = np.zeros(len(given), dtype=bool)
    lowest[np.argsort(quality, kind="stable")[:count]] = True
    issues = lowest & (probabilities.argmax(axis=1) != given)
    return ranked_label_table(manifest, [labels[j] for j in probabilities.argmax(axis=1)], quality, issues, probabilities.max(axis=1))


class Classification(TaskType):
    """Single-label image classification."""

    name = "classification"
    metric = "accuracy"
    metric_title = "validation accuracy"
    secondary_metric = "f1_macro"
    count_noun = "images"
    per_class_metric = "f1"
    keeps_best_checkpoint = True  # early stopping on validation loss

    def target_of(self, annotation: Annotation, config: LabelingConfig, task_id: int, image: Path) -> str:
        return label_of(annotation, config, task_id)

    def classes_in(self, target: str) -> list[str]:
        return [target]

    def result_of(self, target: str, config: LabelingConfig) -> list[dict[str, Any]]:
        return choice_result(target, config)

    def agree(self, predicted: Sequence[Mapping[str, Any]], annotated: Sequence[Mapping[str, Any]], config: LabelingConfig) -> bool | None:
        chosen = chosen_classes(annotated, config)
        if len(chosen) != 1 or chosen[0] not in config.labels:
            return None
        return chosen_classes(predicted, config) == chosen

    def builds(self, architecture: str) -> bool:
        return architecture in ARCHITECTURES

    def datamodule(
        self, folder: Path, manifest: pd.DataFrame, labels: Sequence[str], image_size: int, batch_size: int, augment: bool
    ) -> SnapshotDataModule:
        return SnapshotDataModule(folder, manifest, labels, image_size, batch_size, augment)

    def module(
        self, architecture: str, options: dict[str, Any], labels: Sequence[str], lr: float, augment: bool, copy_paste: float = 0.0
    ) -> Classifier:
        net = build_network(architecture, len(labels), options)
        return Classifier(net, len(labels), lr=lr, augment=augment, architecture=architecture)

    def inference_model(self, net: nn.Module, labels: Sequence[str], image_size: int) -> InferenceModel:
        return InferenceModel(net, labels, image_size).eval()

    def evaluate(self, model: nn.Module, val_set: TensorDataset, labels: Sequence[str]) -> Scores:
        images, targets = val_set.tensors
        result = evaluate(model, images, targets, len(labels))
        metrics = {"accuracy": result["accuracy"], "f1_macro": result["f1_macro"], "log_loss": result["log_loss"]}
        return Scores(
            score=result["accuracy"],
            tiebreak=-result["log_loss"],
            correct=(result["predicted"] == targets).numpy(),
            metrics=metrics,
            per_class=dict(zip(labels, result["f1_per_class"], strict=True)),
            confusion=result["confusion"],
        )

    def figures(self, scores: Scores, labels: Sequence[str], title: str) -> dict[str, Any]:
        return {"confusion_matrix.png": confusion_figure(scores.confusion, labels, f"{title}: validation confusion")}

    def read(
        self, model: nn.Module, images: torch.Tensor, config: LabelingConfig, sizes: Sequence[tuple[int, int]] | None = None
    ) -> tuple[list[Reading], np.ndarray]:
        probabilities, embeddings = infer(model, model.probabilities_and_embeddings, images)
        return readings_of(probabilities.numpy(), model.labels, config), embeddings.numpy()

    def find_label_errors(self, check: CrossValidation) -> tuple[pd.DataFrame, float]:
        folder, manifest, labels, train_fold, folds, seed, progress = check.unpacked()
        manifest = manifest.reset_index(drop=True)
        targets = np.array([list(labels).index(label) for label in manifest["label"]])
        counts = np.bincount(targets, minlength=len(labels))
        k = max(2, min(folds, int(counts[counts > 0].min()))) if len(targets) else 2
        if k < folds:
            log.warning("Cross-validating with %d folds instead of %d: a class has only %d labels.", k, folds, k)
        probabilities = np.zeros((len(targets), len(labels)), dtype=np.float64)
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        for i, (fit_rows, held_rows) in enumerate(splitter.split(np.zeros(len(targets)), targets), start=1):
            progress(f"fold {i}/{k}")
            model = train_fold(manifest.iloc[fit_rows])
            held = load_images([Path(folder) / p for p in manifest["image"].iloc[held_rows]], model.image_size)
            with torch.no_grad():
                probabilities[held_rows] = model(held).double().numpy()
        accuracy = float((probabilities.argmax(axis=1) == targets).mean()) if len(targets) else 0.0
        return rank_label_errors(manifest, probabilities, labels), accuracy
