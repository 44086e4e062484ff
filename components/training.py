"""Training: a LightningDataModule over a snapshot and a LightningModule around any architecture.

`fit` trains one architecture on one snapshot with early stopping, logs to MLflow through
Lightning's `MLFlowLogger` (metrics, hyperparameters, a confusion-matrix plot) and returns the
trained network with its validation metrics. Seeded and deterministic on CPU.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score
from torchvision.transforms import v2

from components.architectures import build_network
from components.faults import pause_point
from components.images import read_image

MEAN, STD = 0.5, 0.5
UNBOUNDED = 1 << 62


def to_tensor(arrays: Sequence[np.ndarray], image_size: int) -> torch.Tensor:
    """Decoded images (S, S, 3 uint8) -> a float tensor (N, 3, S, S) in [0, 1]."""
    if not arrays:
        return torch.empty(0, 3, image_size, image_size)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255.0)


def load_images(paths: Sequence[Path], image_size: int) -> torch.Tensor:
    """Image files already checked readable (a snapshot's) -> a float tensor (N, 3, S, S) in [0, 1]:
    RGB, resized. The one preprocessing (`images.read_image`)."""
    return to_tensor([read_image(Path(p), image_size, max_pixels=UNBOUNDED) for p in paths], image_size)


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


class SnapshotDataModule(L.LightningDataModule):
    """A snapshot's train and validation splits, held in memory (images are small).

    Args:
        snapshot_dir: The snapshot folder (manifest + images).
        manifest: Its manifest.
        labels: The label set; class index = position in it.
        image_size: Side of the square input.
        batch_size: Training batch size.
        augment: Random affine jitter on training images.
    """

    def __init__(
        self, snapshot_dir: Path, manifest: pd.DataFrame, labels: Sequence[str], image_size: int,
        batch_size: int, augment: bool,
    ):
        super().__init__()
        self.snapshot_dir = Path(snapshot_dir)
        self.manifest = manifest
        self.labels = list(labels)
        self.image_size = image_size
        self.batch_size = batch_size
        self.augment = augment
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def _split(self, split: str) -> TensorDataset:
        rows = self.manifest[self.manifest["split"] == split]
        images = load_images([self.snapshot_dir / p for p in rows["image"]], self.image_size)
        targets = torch.tensor([self.labels.index(label) for label in rows["label"]], dtype=torch.long)
        return TensorDataset(images, targets)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._split("train")
            self.val_set = self._split("val")

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


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
        self.log("val_loss", self.loss(logits, targets), prog_bar=True)
        self.val_accuracy.update(logits, targets)
        self.val_f1.update(logits, targets)

    def on_validation_epoch_end(self) -> None:
        self.log("val_accuracy", self.val_accuracy.compute(), prog_bar=True)
        self.log("val_f1_macro", self.val_f1.compute())
        self.val_accuracy.reset()
        self.val_f1.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


class FaultPoint(L.Callback):
    """Where a fault test may stop training: after the first epoch (see `components.faults`; a no-op otherwise)."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 0:
            pause_point("train")


@dataclass(frozen=True)
class TrainedModel:
    """A trained network and how it did on the snapshot's validation split."""

    model: InferenceModel
    run_id: str
    architecture: str
    metrics: dict[str, float]
    confusion: np.ndarray
    val_images: torch.Tensor
    val_targets: torch.Tensor


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


def fit_steps(
    images: torch.Tensor,
    targets: torch.Tensor,
    labels: Sequence[str],
    architecture: str,
    architecture_options: dict[str, Any],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    augment: bool,
    seed: int,
) -> InferenceModel:
    """Train for a fixed number of steps, without validation or tracking (one fold of a cross-validation)."""
    L.seed_everything(seed, workers=True, verbose=False)
    module = Classifier(build_network(architecture, len(labels), architecture_options), len(labels), lr=lr,
                        augment=augment, architecture=architecture)
    loader = DataLoader(TensorDataset(images, targets), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    trainer = L.Trainer(
        max_steps=steps, max_epochs=-1, deterministic=True, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=loader)
    return InferenceModel(module.net, labels, int(images.shape[-1])).eval()


def fit(
    snapshot_dir: Path,
    manifest: pd.DataFrame,
    labels: Sequence[str],
    architecture: str,
    architecture_options: dict[str, Any],
    *,
    image_size: int,
    batch_size: int,
    max_epochs: int,
    min_steps: int,
    patience: int,
    lr: float,
    augment: bool,
    seed: int,
    tracking_uri: str,
    experiment: str,
    run_tags: dict[str, str],
    progress: bool = True,
) -> TrainedModel:
    """Train `architecture` on a snapshot, tracked as one MLflow run.

    Returns:
        The best (lowest validation loss) model wrapped for inference, its MLflow run id and its
        validation metrics (accuracy, f1_macro, f1 per class) with the confusion matrix.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    data = SnapshotDataModule(snapshot_dir, manifest, labels, image_size, batch_size, augment)
    net = build_network(architecture, len(labels), architecture_options)
    module = Classifier(net, len(labels), lr=lr, augment=augment, architecture=architecture)
    logger = MLFlowLogger(experiment_name=experiment, tracking_uri=tracking_uri, tags=run_tags, log_model=False)
    with tempfile.TemporaryDirectory(prefix="flywheel-ckpt-") as checkpoints:
        best = ModelCheckpoint(dirpath=checkpoints, monitor="val_loss", mode="min", save_weights_only=True)
        trainer = L.Trainer(
            max_epochs=max_epochs,
            min_steps=min_steps,
            deterministic=True,
            logger=logger,
            callbacks=[EarlyStopping(monitor="val_loss", patience=patience), best, FaultPoint()],
            enable_progress_bar=progress,
            enable_model_summary=False,
            log_every_n_steps=1,
        )
        trainer.fit(module, datamodule=data)
        if best.best_model_path:
            module.load_state_dict(torch.load(best.best_model_path, weights_only=True)["state_dict"])
    inference = InferenceModel(module.net, labels, image_size)
    images, targets = data.val_set.tensors
    result = evaluate(inference, images, targets, len(labels))
    metrics = {"best_val_accuracy": result["accuracy"], "best_val_f1_macro": result["f1_macro"]}
    metrics.update({f"best_val_f1_{label}": f1 for label, f1 in zip(labels, result["f1_per_class"], strict=True)})
    metrics.update({"train_images": float(len(data.train_set)), "val_images": float(len(images))})
    client = logger.experiment
    for key, value in metrics.items():
        client.log_metric(logger.run_id, key, value)
    fig = confusion_figure(result["confusion"], labels, f"{architecture}: validation confusion")
    client.log_figure(logger.run_id, fig, "confusion_matrix.png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return TrainedModel(
        model=inference.eval(), run_id=logger.run_id, architecture=architecture,
        metrics=metrics, confusion=result["confusion"], val_images=images, val_targets=targets,
    )
