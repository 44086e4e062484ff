"""A dense self-supervised objective for a detector's trunk: the same place, seen in two views, gets the
same features (a known-correspondence form of DenseCL, Wang et al., CVPR 2021, and PixPro, Xie et al.,
CVPR 2021).

SimCLR (`components.learning.pretraining`) pulls together two views of a whole image through one
pooled vector: what a classifier needs. A detector needs features that say what is *where*. Here each
image gives two random crops (with flips and colour changes, no other geometry), so every point of
the crops' overlap is known in both views; the trunk's stride-8 features at a grid of such points are
pulled together and pushed away from every other point of the batch (InfoNCE), beside SimCLR's global
loss on the pooled features (half each, as DenseCL weighs them).
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms import v2

from components.networks.preprocessing import MEAN, STD

GRID = 4  # points per side of the overlap: 16 correspondences per image
SCALE = (0.3, 1.0)  # the crops' share of the image, as SimCLR's views


class CropPairs(Dataset):
    """Each image as two random crops resized to the image's size, and where each came from:
    (view, view, geometry, geometry), a geometry being (top, left, height, width, flipped) in the
    image's pixels."""

    def __init__(self, images: torch.Tensor, flip: bool):
        self.images = images
        self.flip = flip
        self.photometric = v2.Compose([v2.ColorJitter(brightness=0.6, contrast=0.6, saturation=0.4),
                                       v2.RandomApply([v2.GaussianBlur(3)], p=0.5)])

    def __len__(self) -> int:
        return len(self.images)

    def _view(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = image.shape[-1]
        top, left, height, width = v2.RandomResizedCrop.get_params(image, scale=SCALE, ratio=(3 / 4, 4 / 3))
        view = F.interpolate(image[None, :, top : top + height, left : left + width], size=(size, size), mode="bilinear",
                             align_corners=False, antialias=True)[0]
        flipped = self.flip and bool(torch.rand(()) < 0.5)
        if flipped:
            view = view.flip(-1)
        return self.photometric(view.clamp(0, 1)), torch.tensor([top, left, height, width, float(flipped)])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        image = self.images[index]
        (first, where_first), (second, where_second) = self._view(image), self._view(image)
        return first, second, where_first, where_second


def correspondences(first: torch.Tensor, second: torch.Tensor, size: int, grid: int = GRID) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where a grid of points of two crops' overlap lies in each view, in grid_sample's [-1, 1].

    Args:
        first, second: (N, 5) crop geometries (top, left, height, width, flipped) in image pixels.
        size: The views' side in pixels.
        grid: Points per side.

    Returns:
        (N, grid*grid, 2) points in the first view and in the second (x, y), and an (N,) mask of the
        images whose crops overlap at all.
    """
    top = torch.maximum(first[:, 0], second[:, 0])
    left = torch.maximum(first[:, 1], second[:, 1])
    bottom = torch.minimum(first[:, 0] + first[:, 2], second[:, 0] + second[:, 2])
    right = torch.minimum(first[:, 1] + first[:, 3], second[:, 1] + second[:, 3])
    overlaps = (bottom - top > 1) & (right - left > 1)
    steps = (torch.arange(grid, dtype=torch.float32, device=first.device) + 0.5) / grid
    ys = top[:, None] + (bottom - top)[:, None] * steps[None]  # (N, grid)
    xs = left[:, None] + (right - left)[:, None] * steps[None]
    y = ys[:, :, None].expand(-1, grid, grid).reshape(len(first), -1)
    x = xs[:, None, :].expand(-1, grid, grid).reshape(len(first), -1)

    def in_view(where: torch.Tensor) -> torch.Tensor:
        v = (y - where[:, 0:1]) / where[:, 2:3]  # 0..1 down the crop
        u = (x - where[:, 1:2]) / where[:, 3:4]
        u = torch.where(where[:, 4:5] > 0.5, 1 - u, u)
        return torch.stack([2 * u - 1, 2 * v - 1], dim=-1)

    return in_view(first), in_view(second), overlaps


class DenseContrast(L.LightningModule):
    """SimCLR's global loss plus a dense InfoNCE over corresponding points, on a trunk with `pyramid`.

    Args:
        trunk: A detector's trunk (`pyramid(x)` -> strides 4, 8, 16; called, one vector per image).
        feature_dim: Channels of the pooled vector.
        dense_dim: Channels of the stride-8 features.
        lr: AdamW's learning rate.
        temperature: Both losses' temperature.
    """

    def __init__(self, trunk: nn.Module, feature_dim: int, dense_dim: int, lr: float, temperature: float):
        super().__init__()
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        self.save_hyperparameters(ignore=["trunk"])
        self.trunk = trunk
        self.head = SimCLRProjectionHead(feature_dim, 256, 64)
        self.dense_head = nn.Sequential(nn.Linear(dense_dim, 128), nn.ReLU(inplace=True), nn.Linear(128, 64))
        self.global_loss = NTXentLoss(temperature=temperature)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        first, second, where_first, where_second = batch
        _, c8, c16 = self.trunk.pyramid((torch.cat([first, second]) - MEAN) / STD)
        z = self.head(c16.mean(dim=(2, 3)))
        global_loss = self.global_loss(*z.chunk(2))
        at_first, at_second, overlaps = correspondences(where_first, where_second, first.shape[-1])
        dense_loss = self._dense(*c8.chunk(2), at_first[overlaps], at_second[overlaps], overlaps) if overlaps.any() else c8.sum() * 0
        loss = 0.5 * global_loss + 0.5 * dense_loss
        self.log_dict({"pretrain_loss": loss, "dense_loss": dense_loss}, prog_bar=True, on_epoch=True, on_step=False)
        return loss

    def _dense(self, first: torch.Tensor, second: torch.Tensor, at_first: torch.Tensor, at_second: torch.Tensor,
               overlaps: torch.Tensor) -> torch.Tensor:
        def points(features: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
            sampled = F.grid_sample(features[overlaps], at[:, :, None, :], mode="bilinear", align_corners=False)  # (M, C, P, 1)
            flat = sampled[..., 0].permute(0, 2, 1).reshape(-1, features.shape[1])
            return F.normalize(self.dense_head(flat), dim=1)

        q, k = points(first, at_first), points(second, at_second)
        logits = q @ k.T / self.hparams.temperature
        target = torch.arange(len(q), device=q.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=1e-4)


def dense_module(trunk: nn.Module, image_size: int, lr: float, temperature: float) -> DenseContrast:
    """The objective for `trunk`, its heads sized by one pass over a blank image."""
    with torch.no_grad():
        _, c8, c16 = trunk.pyramid(torch.zeros(2, 3, image_size, image_size))
    return DenseContrast(trunk, c16.shape[1], c8.shape[1], lr=lr, temperature=temperature)

