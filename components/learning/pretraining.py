"""Self-supervised pretraining on every image of the project, labeled or not (lightly's SimCLR).

A project holds hundreds or thousands of images and, early on, a few dozen labels. The loop's
classifiers learn only from the labels; this module first teaches the architecture's backbone what
the project's images look like, from all of them, with SimCLR: two random views of each image
(crops, small rotations, contrast, blur, erasing) are pulled together and pushed away from the
other images' views (lightly's `SimCLRProjectionHead` and `NTXentLoss`, in a Lightning module).

The backbone is each architecture's `features` (images -> one vector each): a classifier's convolutions,
or a detector's and a segmenter's trunk (`components.networks.detectors.Trunk`), so boxes and masks
learn from the unlabeled pool too. Its weights are logged
as an MLflow run of their own (`flywheel.kind = pretraining`), tagged with the DVC revision of the
pool it saw; the loop's models start from them, and "Label next" and the error finder embed with
them from the first label on. Measured choices (recipe, epochs) are in bench/RESULTS.md.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from components.core.tags import TAG_READY
from components.learning.training import WaitWhile
from components.networks.architectures import ARCHITECTURES
from components.networks.backbones import backbone_of, load_backbone
from components.networks.compute import CPU, Compute, trainer_kwargs
from components.networks.preprocessing import MEAN, STD

BACKBONE_FILE = "backbone.pt"


def build_network(architecture: str, num_classes: int, options: dict[str, Any]) -> nn.Module:
    """Any network params.yaml names (a classifier, a detector, a segmenter): its backbone is what
    pretraining learns.

    Raises:
        SettingsError: Unknown name or option (the classifiers' message, which lists the known ones).
    """
    from components.networks.detectors import DETECTORS
    from components.networks.segmenters import SEGMENTERS

    for networks in (DETECTORS, SEGMENTERS):
        if architecture in networks:
            return networks.build(architecture, num_classes, options)
    return ARCHITECTURES.build(architecture, num_classes, options)


def views(image_size: int, flip: bool) -> v2.Compose:
    """One random view of an image for SimCLR: what the backbone learns to see past. Measured on
    MNIST (bench/RESULTS.md): strong crops, contrast and erasing beat mild affine jitter."""
    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=(0.3, 1.0), antialias=True),
        v2.RandomAffine(degrees=15, shear=10),
        *([v2.RandomHorizontalFlip()] if flip else []),
        v2.ColorJitter(brightness=0.6, contrast=0.6),
        v2.RandomApply([v2.GaussianBlur(3)], p=0.5),
        v2.RandomErasing(p=0.3, scale=(0.05, 0.15), value=0),
    ])


class TwoViews(Dataset):
    """Each image as two independent random views."""

    def __init__(self, images: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        return self.transform(image), self.transform(image)


class SimCLR(L.LightningModule):
    """SimCLR over a backbone: lightly's projection head and NT-Xent loss."""

    def __init__(self, backbone: nn.Module, feature_dim: int, lr: float, temperature: float):
        super().__init__()
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone
        self.head = SimCLRProjectionHead(feature_dim, 256, 64)
        self.loss = NTXentLoss(temperature=temperature)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        first, second = batch
        z = self.head(self.backbone((torch.cat([first, second]) - MEAN) / STD).flatten(1))
        loss = self.loss(*z.chunk(2))
        self.log("pretrain_loss", loss, prog_bar=True, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=1e-4)


@dataclass(frozen=True)
class Pretrained:
    """A pretrained backbone and where it is logged."""

    run_id: str
    state: dict[str, torch.Tensor]
    pool_images: int
    seconds: float


def pretrain(
    images: torch.Tensor,
    architecture: str,
    options: dict[str, Any],
    num_classes: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    temperature: float,
    flip: bool,
    seed: int,
    tracking_uri: str,
    experiment: str,
    run_tags: dict[str, str],
    progress: bool = True,
    wait_while: Callable[[], bool] = lambda: False,
    compute: Compute = CPU,
) -> Pretrained:
    """Pretrain `architecture`'s backbone on `images` with SimCLR, tracked as one MLflow run.

    Args:
        images: (N, 3, S, S) in [0, 1]: every image of the project (a random draw when capped).
        architecture: The network whose `features` are pretrained (params.yaml's name).
        options: Its options (params.yaml's `architectures.<name>`).
        num_classes: Its head's classes (the head is not pretrained).
        epochs: SimCLR's passes over the images (params.yaml's `pretrain`).
        batch_size: Images per batch (each gives two views).
        lr: The optimizer's learning rate.
        temperature: The contrastive loss's temperature.
        flip: Whether a mirrored image is the same thing (not for digits or text).
        seed: Seeds the views and the order.
        tracking_uri: The MLflow server the run goes to.
        experiment: The run's experiment.
        run_tags: What links the run to its pool.
        progress: A progress bar per epoch.
        wait_while: Asked before each batch: training holds while it says True (the loop refreshing
            pre-annotations); the seconds held are logged (`pretrain_waited_s`), not counted in
            `pretrain_seconds`.
        compute: Where it trains (`components.networks.compute`); the weights come back on the CPU.

    Returns:
        The backbone's weights (also logged as the run's `backbone.pt`) and the run id.

    Raises:
        ValueError: The architecture has no `features` backbone, or there are fewer than 2 images.
    """
    from lightning.pytorch.loggers import MLFlowLogger

    L.seed_everything(seed, workers=True, verbose=False)
    backbone = backbone_of(build_network(architecture, num_classes, options))
    if backbone is None:
        raise ValueError(f"Architecture {architecture!r} has no `features` backbone to pretrain.")
    if len(images) < 2:
        raise ValueError("Pretraining needs at least 2 images.")
    with torch.no_grad():
        feature_dim = backbone(torch.zeros(2, *images.shape[1:])).flatten(1).shape[1]
    module = SimCLR(backbone, feature_dim, lr=lr, temperature=temperature)
    loader = DataLoader(
        TwoViews(images, views(images.shape[-1], flip)), batch_size=min(batch_size, len(images)), shuffle=True,
        drop_last=True, generator=torch.Generator().manual_seed(seed),
    )
    logger = MLFlowLogger(experiment_name=experiment, tracking_uri=tracking_uri, tags=run_tags, log_model=False)
    logger.log_hyperparams({"method": "simclr", "epochs": epochs, "batch_size": batch_size, "lr": lr,
                            "temperature": temperature, "flip": flip, "architecture": architecture})
    with tempfile.TemporaryDirectory(prefix="flywheel-pretrain-") as scratch:
        waiting = WaitWhile(wait_while)
        trainer = L.Trainer(
            max_epochs=epochs, logger=logger, enable_checkpointing=False, enable_progress_bar=progress,
            enable_model_summary=False, default_root_dir=scratch, log_every_n_steps=1, deterministic=True,
            callbacks=[waiting], **trainer_kwargs(compute),
        )
        start = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader)
        seconds = time.perf_counter() - start - waiting.waited_s
        state = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
        path = Path(scratch) / BACKBONE_FILE
        torch.save(state, path)
        client = logger.experiment
        client.log_artifact(logger.run_id, str(path))
        for key, value in {"pretrain_seconds": seconds, "pool_images": len(images),
                           "pretrain_s_per_1k": seconds * 1000 / len(images), "pretrain_waited_s": waiting.waited_s}.items():
            client.log_metric(logger.run_id, key, float(value))
        client.set_tag(logger.run_id, TAG_READY, "true")
    return Pretrained(run_id=logger.run_id, state=state, pool_images=len(images), seconds=seconds)


def embed_with(backbone_state: dict[str, torch.Tensor], architecture: str, options: dict[str, Any], num_classes: int,
               images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """(N, D) unit-length embeddings of images in [0, 1] by a pretrained backbone."""
    net = build_network(architecture, num_classes, options)
    if not load_backbone(net, backbone_state):
        raise ValueError(f"The pretrained backbone does not fit {architecture!r} as params.yaml builds it now.")
    backbone = backbone_of(net).eval()
    with torch.no_grad():
        out = [backbone((chunk - MEAN) / STD).flatten(1) for chunk in images.split(batch_size)] if len(images) else []
    vectors = torch.cat(out).numpy() if out else np.empty((0, 0))
    norms = np.linalg.norm(vectors, axis=1, keepdims=True) if len(vectors) else 1
    return vectors / np.where(norms == 0, 1, norms)


def refresh_due(pool_images: int, pretrained_on: int | None, growth: float) -> bool:
    """Whether the backbone should be pretrained again: there is none yet, or the pool grew by more
    than `growth` (a share) since the one there is saw it."""
    if pretrained_on is None:
        return pool_images >= 2
    return pool_images > pretrained_on * (1 + growth)


def sample(count: int, limit: int, seed: int) -> Sequence[int]:
    """Which of `count` images to pretrain on: all of them, or a seeded draw of `limit`."""
    if count <= limit:
        return range(count)
    return sorted(np.random.default_rng(seed).choice(count, size=limit, replace=False).tolist())
