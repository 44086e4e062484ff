"""Plain `nn.Module` instance segmenters, built by name like `components.networks.detectors`.

The default, `mask_centernet`, is the CenterNet detector of `components.networks.detectors` with a mask head
in the manner of Mask R-CNN's (He et al., 2017): every box is cut out of the full-resolution image and
of the detector's stride-4 features with RoIAlign onto an M x M grid, and a few convolutions predict
which of those cells belong to the object. Trained on the true boxes, run on the detected ones; the
M x M probabilities are sampled back at the image's pixel centres (`tasks.segmentation.paste`).
The image itself goes into the head, not only stride-4 features: the demo's digits are strokes two or
three pixels wide, which stride 4 cannot outline. It was chosen over torchvision's Mask R-CNN trained
from scratch by measurement (bench/RESULTS.md, "Instance segmentation: which model").
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from components.networks.architectures import Networks
from components.networks.detectors import CenterNet


MASK_MARGIN = 0.15  # the mask is predicted over the box grown by this share of its size on every side


def mask_region(boxes: torch.Tensor) -> torch.Tensor:
    """The region (K, 4) xyxy a mask is predicted over: the box grown by MASK_MARGIN, so a detected
    box a little too small does not cut its object's mask."""
    size = (boxes[:, 2:] - boxes[:, :2]) * MASK_MARGIN
    return torch.cat([boxes[:, :2] - size, boxes[:, 2:] + size], dim=1)


class MaskCenterNet(CenterNet):
    """CenterNet plus a RoIAlign mask head (class-agnostic: the box's class is the detector's).

    Args:
        num_classes: As `CenterNet`.
        mask_size: Side M of the grid each object's mask is predicted on.
        mask_width: Hidden channels of the mask head.
        mask_weight: Weight of the mask loss (binary cross-entropy per cell) against the detector's.
        detector: `CenterNet`'s options (width, head_width, size_weight, offset_weight).
    """

    def __init__(self, num_classes: int, mask_size: int = 28, mask_width: int = 32, mask_weight: float = 1.0, **detector: Any):
        super().__init__(num_classes, **detector)
        self.mask_size = mask_size
        self.mask_weight = mask_weight
        self.mask_head = nn.Sequential(
            nn.Conv2d(3 + self.head_width, mask_width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(mask_width, mask_width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(mask_width, mask_width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(mask_width, 1, 1),
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """`CenterNet.forward`'s outputs plus what the mask head reads: `pixels` (the normalised
        image) and `features` (stride 4)."""
        pixels, c16, p4 = self.trunk(images)
        return {**self.heads(c16, p4), "pixels": pixels, "features": p4}

    def mask_logits(self, outputs: dict[str, torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        """Mask logits (R, M, M) over `mask_region` of boxes (R, 5): batch index, then x1, y1, x2, y2
        in input pixels."""
        boxes = torch.cat([boxes[:, :1], mask_region(boxes[:, 1:])], dim=1)
        m = self.mask_size
        pixels = roi_align(outputs["pixels"], boxes, m, spatial_scale=1.0, sampling_ratio=2, aligned=True)
        features = roi_align(outputs["features"], boxes, m, spatial_scale=1.0 / self.stride, sampling_ratio=2, aligned=True)
        return self.mask_head(torch.cat([pixels, features], dim=1))[:, 0]

    def loss(self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """The detector's loss plus binary cross-entropy of each true object's mask on its true box.

        Args:
            outputs: `forward`'s outputs.
            targets: Per image `boxes` (K, 4) xyxy and `labels` (K,) as `CenterNet.loss`, and
                `masks` (K, S, S) boolean in input pixels.
        """
        detection = super().loss(outputs, targets)
        device = outputs["pixels"].device
        rois = [
            torch.cat([torch.full((len(t["boxes"]), 1), float(i), device=device), t["boxes"].float().to(device)], dim=1)
            for i, t in enumerate(targets) if len(t["boxes"])
        ]
        if not rois:
            return detection + 0.0 * sum(p.sum() for p in self.mask_head.parameters())
        boxes = torch.cat(rois)
        # Each true mask cut on its own box: the object's mask as one channel of its own image.
        masks = torch.cat([t["masks"].float().to(device) for t in targets if len(t["boxes"])])[:, None]
        own = torch.arange(len(boxes), device=device, dtype=boxes.dtype)[:, None]
        truth = roi_align(masks, torch.cat([own, mask_region(boxes[:, 1:])], dim=1), self.mask_size, spatial_scale=1.0,
                          sampling_ratio=2, aligned=True)[:, 0]
        mask_loss = F.binary_cross_entropy_with_logits(self.mask_logits(outputs, boxes), (truth >= 0.5).float())
        return detection + self.mask_weight * mask_loss

    @torch.no_grad()
    def decode_masks(self, outputs: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """Mask probabilities (N, K, M, M) on the boxes of `decode_padded`'s rows (N, K, 6)."""
        n, k, _ = rows.shape
        if n * k == 0:
            return rows.new_zeros(n, k, self.mask_size, self.mask_size)
        index = torch.arange(n, dtype=rows.dtype, device=rows.device)[:, None, None].expand(n, k, 1)
        boxes = torch.cat([index, rows[..., :4]], dim=2).reshape(n * k, 5)
        return self.mask_logits(outputs, boxes).sigmoid().reshape(n, k, self.mask_size, self.mask_size)


SEGMENTERS = Networks("segmenter", {"mask_centernet": MaskCenterNet})
build_segmenter = SEGMENTERS.build  # a segmenter, by its name in params.yaml
