"""Training a model of objects (a detector or a segmenter): images with their objects in model pixels,
the DataModule over a snapshot's splits, and the LightningModule that trains any network of
`components.networks.detectors` or `components.networks.segmenters`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import Dataset

from components.learning.training import SplitsDataModule
from components.networks.backbones import backbone_of
from components.networks.detectors import copy_paste, jitter
from components.networks.preprocessing import load_images
from components.tasks.objects import parse_target


def boxes_in_model_pixels(target: Mapping[str, Any], image_size: int) -> tuple[torch.Tensor, list[str]]:
    """A parsed target -> boxes (K, 4) xyxy in model pixels (the image resized to S x S), their labels."""
    sx, sy = image_size / target["width"], image_size / target["height"]
    boxes = [[b["x"] * sx, b["y"] * sy, (b["x"] + b["w"]) * sx, (b["y"] + b["h"]) * sy] for b in target["boxes"]]
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), [b["label"] for b in target["boxes"]]


class BoxesDataset(Dataset):
    """Images held in memory (N, 3, S, S) with their boxes in model pixels and class indices."""

    def __init__(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]):
        self.images = images
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.images[i], self.targets[i]


def collate(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Stack the images; keep the targets a list (each image has its own number of boxes)."""
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]


class DetectionDataModule(SplitsDataModule):
    """A snapshot's splits with their boxes, scaled with the image to S x S (`Detector` jitters both
    when `augment`); arguments as `training.SplitsDataModule`."""

    collate_fn = staticmethod(collate)
    val_batch_size = 64

    def _split(self, split: str) -> BoxesDataset:
        rows = self.manifest[self.manifest["split"] == split]
        images = load_images([self.snapshot_dir / p for p in rows["image"]], self.image_size)
        return BoxesDataset(images, [self.tensors_of(parse_target(text)) for text in rows["label"]])

    def tensors_of(self, target: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """One image's parsed target as the model trains on it: its boxes in model pixels and class indices."""
        boxes, names = boxes_in_model_pixels(target, self.image_size)
        return {"boxes": boxes, "labels": torch.tensor([self.labels.index(n) for n in names], dtype=torch.long)}


class Detector(L.LightningModule):
    """Trains any detector of `components.networks.detectors` (its `loss` holds the task's loss)."""

    def __init__(self, net: nn.Module, lr: float, augment: bool, architecture: str, copy_paste: float = 0.0):
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.generator = torch.Generator().manual_seed(0)
        self.backbone_lr_scale = 1.0  # a pretrained backbone learns slower than the rest (training.fit sets it)

    def augmented(self, batch: tuple[torch.Tensor, list[dict[str, torch.Tensor]]]) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """A training batch jittered (scale, shift, colours) and, with `copy_paste`, given objects of its other images."""
        images, targets = batch
        moved = [jitter(image, target, self.generator) for image, target in zip(images, targets, strict=True)]
        images = torch.stack([image for image, _ in moved])
        return copy_paste(images, [target for _, target in moved], self.generator, self.hparams.copy_paste)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # on the CPU, before Lightning moves the batch to the device (a GPU): the augmentations build CPU tensors
        if self.hparams.augment and self.trainer.training:
            return self.augmented(batch)
        return batch

    def training_step(self, batch: tuple[torch.Tensor, list[dict[str, torch.Tensor]]], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        loss = self.net.loss(self.net(images), targets)
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, on_step=False, batch_size=len(images))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, list[dict[str, torch.Tensor]]], batch_idx: int) -> None:
        images, targets = batch
        self.log("val_loss", self.net.loss(self.net(images), targets), prog_bar=True, batch_size=len(images), sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        # One cycle over the run, peaking at `lr` (docs/studies/detector-choice.md): from scratch, the warm-up
        # keeps the focal loss stable and the decay settles the boxes.
        lr, backbone = self.hparams.lr, backbone_of(self.net)
        if backbone is None or self.backbone_lr_scale == 1.0:
            groups = [{"params": list(self.parameters()), "lr": lr}]
        else:
            inside = {id(p) for p in backbone.parameters()}
            groups = [{"params": [p for p in self.parameters() if id(p) not in inside], "lr": lr},
                      {"params": list(backbone.parameters()), "lr": lr * self.backbone_lr_scale}]
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in groups], total_steps=max(int(self.trainer.estimated_stepping_batches), 1),
            pct_start=0.15,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
