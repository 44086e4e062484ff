"""Plain `nn.Module` object detectors, built by name like `components.networks.architectures`.

The default, `centernet`, is a small anchor-free detector after "Objects as Points" (Zhou et al.,
2019): a light conv backbone with a top-down neck to stride 4, a per-class centre heatmap trained
with the penalty-reduced focal loss, and box size and centre offset regressed at the centres. It was
chosen over torchvision's detectors trained from scratch by `bench/detector_choice.py`: on 2 CPU
cores and 200 labeled images it reaches a far higher mAP in the same ~40 s (see
docs/studies/detector-choice.md).

Every detector maps a batch (N, 3, S, S) of RGB in [0, 1] to a dict of raw outputs; `loss`,
`decode` and `embed` interpret that dict, so a Lightning wrapper needs nothing model-specific.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from components.core.errors import SettingsError
from components.networks.architectures import Networks
from components.networks.preprocessing import MEAN, STD


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


def _head(c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, c_out, 1))


def _gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius: how far a corner may move and the box still overlaps the truth by `min_overlap`."""
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 16 * c2)) / 8
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


class Trunk(nn.Module):
    """CenterNet's backbone: normalised images -> features at strides 4, 8 and 16 (`pyramid`). Called
    as a module it gives one vector per image (the stride-16 features, pooled): what self-supervised
    pretraining teaches it on every image of the project (`components.learning.pretraining`), as it
    does a classifier's `features`.

    Args:
        width: Channels of the first stage; later stages use 2x, 4x and 4x.
    """

    def __init__(self, width: int):
        super().__init__()
        self.channels = (2 * width, 4 * width, 4 * width)  # of `pyramid`'s strides 4, 8, 16
        self.stem = nn.Sequential(_conv(3, width, 2), _conv(width, width))
        self.stage4 = nn.Sequential(_conv(width, 2 * width, 2), _conv(2 * width, 2 * width))
        self.stage8 = nn.Sequential(_conv(2 * width, 4 * width, 2), _conv(4 * width, 4 * width))
        # Dilation widens the receptive field past the largest digit (48 px) without another stride.
        self.stage16 = nn.Sequential(
            _conv(4 * width, 4 * width, 2),
            nn.Sequential(
                nn.Conv2d(4 * width, 4 * width, 3, padding=2, dilation=2, bias=False),
                nn.BatchNorm2d(4 * width),
                nn.ReLU(inplace=True),
            ),
        )

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features at strides 4, 8 and 16 of normalised images (N, 3, S, S)."""
        c4 = self.stage4(self.stem(x))
        c8 = self.stage8(c4)
        return c4, c8, self.stage16(c8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pyramid(x)[2].mean(dim=(2, 3))


class CenterNet(nn.Module):
    """A small CenterNet: per-class centre heatmap, box size and centre offset at stride 4.

    Args:
        num_classes: Number of object classes.
        width: Channels of the first stage; later stages use 2x, 4x and 4x.
        head_width: Hidden channels of each prediction head and of the neck.
        size_weight: Weight of the box-size loss (L1 on log size) against the heatmap focal loss.
        offset_weight: Weight of the centre-offset loss (L1, in output cells).
        backbone: "trunk" (the small trunk above, from nothing or self-supervised), "resnet18" or
            "mobilenet_v2" (`components.networks.pretrained.ResNetTrunk`, `MobileNetTrunk`: ImageNet weights
            with `pretrained`, or `weights`).
        pretrained: With backbone resnet18 or mobilenet_v2: ImageNet weights through torchvision (resnet18
            needs internet once; mobilenet_v2's also ship in a package, requirements-weights.txt).
        weights: With backbone resnet18 or mobilenet_v2: a local state dict of that network instead.
    """

    stride = 4
    REGRESS_ABOVE = 0.3

    def __init__(
        self,
        num_classes: int,
        width: int = 16,
        head_width: int = 32,
        size_weight: float = 1.0,
        offset_weight: float = 1.0,
        backbone: str = "trunk",
        pretrained: bool = False,
        weights: str | None = None,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.head_width = head_width
        self.size_weight = size_weight
        self.offset_weight = offset_weight
        if backbone in ("resnet18", "mobilenet_v2"):
            from components.networks.pretrained import MobileNetTrunk, ResNetTrunk

            self.features: nn.Module = {"resnet18": ResNetTrunk, "mobilenet_v2": MobileNetTrunk}[backbone](pretrained, weights)
        elif backbone == "trunk" and not (pretrained or weights):
            self.features = Trunk(width)
        else:
            raise SettingsError(f"architectures.centernet: backbone {backbone!r} with pretrained={pretrained} and weights={weights!r}: "
                                "use backbone: trunk (no weights), or backbone: resnet18 or mobilenet_v2 with pretrained: true or weights: FILE.")
        c4, c8, c16 = self.features.channels
        # Images are normalised by MEAN and this before the trunk: STD, as self-supervised pretraining
        # does; weights from before the trunk was `features` kept their 0.25 (`_load_from_state_dict`).
        self.register_buffer("input_std", torch.tensor(float(STD)))
        self.lateral16 = nn.Conv2d(c16, head_width, 1)
        self.lateral8 = nn.Conv2d(c8, head_width, 1)
        self.lateral4 = nn.Conv2d(c4, head_width, 1)
        self.smooth8 = _conv(head_width, head_width)
        self.smooth4 = _conv(head_width, head_width)
        self.heatmap = _head(head_width, head_width, num_classes)
        self.size = _head(head_width, head_width, 2)
        self.offset = _head(head_width, head_width, 2)
        # Start every centre at a 0.1 prior so the focal loss is not swamped by easy negatives.
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - 0.1) / 0.1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs of a batch (N, 3, S, S) in [0, 1]; S must be a multiple of 16.

        Returns:
            `heatmap` logits (N, C, S/4, S/4), `size` log box size in cells (N, 2, S/4, S/4),
            `offset` of the centre inside its cell (N, 2, S/4, S/4), and `embedding` (N, D), the
            pooled deepest features.
        """
        _, c16, p4 = self.trunk(images)
        return self.heads(c16, p4)

    def trunk(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(normalised images, deepest features at stride 16, neck features at stride 4)."""
        x = (images - MEAN) / self.input_std
        c4, c8, c16 = self.features.pyramid(x)
        p8 = self.smooth8(self.lateral8(c8) + F.interpolate(self.lateral16(c16), scale_factor=2.0, mode="nearest"))
        p4 = self.smooth4(self.lateral4(c4) + F.interpolate(p8, scale_factor=2.0, mode="nearest"))
        return x, c16, p4

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Weights saved before the trunk became `features` (a model registered by an older flywheel):
        its stages are renamed into the trunk, and their input scale (0.25) is kept."""
        stages = tuple(f"{prefix}{name}." for name in ("stem", "stage4", "stage8", "stage16"))
        old = [key for key in state_dict if key.startswith(stages)]
        for key in old:
            state_dict[f"{prefix}features.{key[len(prefix):]}"] = state_dict.pop(key)
        if old:
            state_dict.setdefault(f"{prefix}input_std", torch.tensor(0.25))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def heads(self, c16: torch.Tensor, p4: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "heatmap": self.heatmap(p4),
            "size": self.size(p4),
            "offset": self.offset(p4),
            "embedding": c16.mean(dim=(2, 3)),
        }

    def _targets(
        self, targets: list[dict[str, torch.Tensor]], shape: tuple[int, int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Heatmap (N, C, H, W) and, per regressed cell: batch index, flat cell, log size, offset, weight.

        Size and offset are regressed at every cell where an object's Gaussian is above
        `REGRESS_ABOVE`, weighted by it, not only at the centre: a few hundred labeled objects
        give the regression heads several times more examples.
        """
        height, width = shape
        heatmap = torch.zeros(len(targets), self.num_classes, height, width, device=device)
        ys = torch.arange(height, device=device, dtype=torch.float32)[:, None]
        xs = torch.arange(width, device=device, dtype=torch.float32)[None, :]
        batch, cells, sizes, offsets, weights = [], [], [], [], []
        for i, target in enumerate(targets):
            boxes = target["boxes"].to(device=device, dtype=torch.float32) / self.stride
            for box, label in zip(boxes, target["labels"].tolist(), strict=True):
                w, h = (box[2] - box[0]).clamp(min=1e-3), (box[3] - box[1]).clamp(min=1e-3)
                centre = torch.stack([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
                cx = int(centre[0].clamp(0, width - 1))
                cy = int(centre[1].clamp(0, height - 1))
                radius = max(0, int(_gaussian_radius(float(h), float(w))))
                sigma = (2 * radius + 1) / 6
                blob = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
                heatmap[i, label] = torch.maximum(heatmap[i, label], blob)
                near_y, near_x = torch.nonzero(blob >= self.REGRESS_ABOVE, as_tuple=True)
                batch.append(torch.full_like(near_y, i))
                cells.append(near_y * width + near_x)
                sizes.append(torch.stack([w, h]).log().expand(len(near_y), 2))
                offsets.append(centre - torch.stack([near_x, near_y], dim=1).float())
                weights.append(blob[near_y, near_x] / blob[near_y, near_x].sum())
        if not batch:
            empty = torch.zeros(0, 2, device=device)
            nothing = torch.zeros(0, dtype=torch.long, device=device)
            return heatmap, nothing, nothing, empty, empty, torch.zeros(0, device=device)
        return heatmap, torch.cat(batch), torch.cat(cells), torch.cat(sizes), torch.cat(offsets), torch.cat(weights)

    def loss(self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Focal loss on the centre heatmap plus the weighted L1 size and offset losses.

        Args:
            outputs: `forward`'s outputs.
            targets: Per image, `boxes` (K, 4) xyxy in input pixels and `labels` (K,) in
                [0, num_classes); K may be 0.

        Returns:
            The scalar loss, normalised by the number of objects in the batch (at least 1).
        """
        logits = outputs["heatmap"]
        heatmap, batch, cells, sizes, offsets, weights = self._targets(targets, logits.shape[-2:], logits.device)
        probability = logits.sigmoid()
        positive = heatmap.eq(1.0).float()
        # log(p) and log(1 - p) from the logits: stable where the sigmoid saturates.
        positive_loss = F.logsigmoid(logits) * (1 - probability) ** 2 * positive
        negative_loss = F.logsigmoid(-logits) * probability**2 * (1 - heatmap) ** 4 * (1 - positive)
        count = max(1.0, float(positive.sum()))
        focal = -(positive_loss.sum() + negative_loss.sum()) / count
        if batch.numel() == 0:
            # Keep the regression heads in the graph so every parameter gets a (zero) gradient.
            return focal + 0.0 * (outputs["size"].sum() + outputs["offset"].sum())
        n, _, h, w = logits.shape
        pred_size = outputs["size"].reshape(n, 2, h * w)[batch, :, cells]
        pred_offset = outputs["offset"].reshape(n, 2, h * w)[batch, :, cells]
        size_loss = (F.l1_loss(pred_size, sizes, reduction="none").sum(1) * weights).sum() / count
        offset_loss = (F.l1_loss(pred_offset, offsets, reduction="none").sum(1) * weights).sum() / count
        return focal + self.size_weight * size_loss + self.offset_weight * offset_loss

    @torch.no_grad()
    def decode_padded(self, outputs: dict[str, torch.Tensor], max_detections: int = 50) -> torch.Tensor:
        """The best `max_detections` peaks of the heatmap's local maxima (3x3) per image, as one tensor.

        Returns:
            (N, K, 6): rows (x1, y1, x2, y2, score, class index) in input pixels, highest score first;
            K = min(max_detections, classes x cells). No per-image loop, so it traces for any batch size.
        """
        logits = outputs["heatmap"]
        n, c, h, w = logits.shape
        heat = logits.sigmoid()
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
        k = min(max_detections, c * h * w)
        # A stable sort keeps ties in index order, so decoding is deterministic.
        scores, order = peaks.reshape(n, -1).sort(dim=1, descending=True, stable=True)
        scores, order = scores[:, :k], order[:, :k]
        labels = order // (h * w)
        cells = order % (h * w)
        cell_y = torch.div(cells, w, rounding_mode="floor").float()
        cell_x = (cells % w).float()
        sizes = outputs["size"].reshape(n, 2, h * w).gather(2, cells[:, None, :].expand(n, 2, k)).exp()
        offsets = outputs["offset"].reshape(n, 2, h * w).gather(2, cells[:, None, :].expand(n, 2, k))
        cx = (cell_x + offsets[:, 0]) * self.stride
        cy = (cell_y + offsets[:, 1]) * self.stride
        bw, bh = sizes[:, 0] * self.stride, sizes[:, 1] * self.stride
        return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, scores, labels.float()], dim=2)

    @torch.no_grad()
    def decode(
        self, outputs: dict[str, torch.Tensor], score_threshold: float = 0.05, max_detections: int = 50
    ) -> list[dict[str, torch.Tensor]]:
        """Boxes from the heatmap's local maxima (3x3), best `max_detections` per image.

        Returns:
            Per image `boxes` (K, 4) xyxy in input pixels, `scores` (K,) the peak heights and
            `labels` (K,), sorted by score, highest first.
        """
        detections = []
        for rows in self.decode_padded(outputs, max_detections):
            keep = rows[:, 4] >= score_threshold
            detections.append({"boxes": rows[keep, :4], "scores": rows[keep, 4], "labels": rows[keep, 5].long()})
        return detections

    def embed(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, D) pooled backbone features of the batch, for diversity sampling in active learning."""
        return outputs["embedding"]


def jitter(
    image: torch.Tensor, target: dict[str, torch.Tensor], generator: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Randomly rescale (0.75x to 1.25x), translate and recolour one image, moving its objects with it.

    The translation is drawn so that every box stays inside the image, so no object is cut or
    lost. There is no flip: a mirrored digit is not the same digit.

    Args:
        image: (3, S, S) float in [0, 1].
        target: `boxes` (K, 4) xyxy in pixels (K may be 0), and when the task has them `masks`
            (K, S, S) boolean, moved by the same transform; other keys are kept as they are.
        generator: Source of randomness, so a seeded run repeats.

    Returns:
        The jittered image (edges extended where it moved in) and its target.
    """
    boxes = target["boxes"]
    _, height, width = image.shape
    scale = float(0.75 + 0.5 * torch.rand((), generator=generator))
    centre = torch.tensor([width / 2, height / 2, width / 2, height / 2])
    scaled = (boxes.float() - centre) * scale + centre
    if len(boxes):
        lower = (-scaled[:, :2].min(dim=0).values).tolist()
        upper = (torch.tensor([width, height]) - scaled[:, 2:].max(dim=0).values).tolist()
    else:
        lower, upper = [-width / 4, -height / 4], [width / 4, height / 4]
    if lower[0] > upper[0] or lower[1] > upper[1]:
        # The boxes span more than the image once enlarged: keep the original rather than cut them.
        return image, target
    shift = [lo + (hi - lo) * float(torch.rand((), generator=generator)) for lo, hi in zip(lower, upper, strict=True)]
    # affine_grid maps output to input coordinates in [-1, 1], hence the inverse transform.
    tx, ty = 2 * shift[0] / width, 2 * shift[1] / height
    theta = torch.tensor([[1 / scale, 0.0, -tx / scale], [0.0, 1 / scale, -ty / scale]], dtype=image.dtype)
    grid = F.affine_grid(theta[None], [1, *image.shape], align_corners=False)
    moved = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    # A channel shuffle recolours digit and background alike, so the net learns shapes, not inks.
    moved = moved[torch.randperm(3, generator=generator)]
    result = {**target, "boxes": scaled + torch.tensor([shift[0], shift[1], shift[0], shift[1]])}
    if "masks" in target and len(boxes):
        masks = F.grid_sample(target["masks"].float()[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        result["masks"] = masks >= 0.5
    return moved, result


def copy_paste(
    images: torch.Tensor, targets: list[dict[str, torch.Tensor]], generator: torch.Generator, probability: float,
    max_objects: int = 3,
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Copy-paste augmentation within a batch (Ghiasi et al., "Simple Copy-Paste is a Strong Data
    Augmentation Method for Instance Segmentation", CVPR 2021): with `probability`, an image receives up
    to `max_objects` labeled objects of another image of the batch, each rescaled (0.75x to 1.25x) and
    put where it overlaps no labeled object's box, so no label changes. An
    object is cut by its mask when the task has masks, else by its box.

    Args:
        images: (N, 3, S, S) in [0, 1].
        targets: Per image `boxes` (K, 4) xyxy in pixels and `labels` (K,), with `masks` (K, S, S) when the task has them.
        generator: Source of randomness, so a seeded run repeats.
        probability: Chance that an image receives objects.

    Returns:
        The images and their targets with the pasted objects appended.
    """
    n, _, height, width = images.shape
    if n < 2 or probability <= 0:
        return images, targets
    source, images = images, images.clone()
    out = [dict(t) for t in targets]
    for i in range(n):
        if float(torch.rand((), generator=generator)) >= probability:
            continue
        donors = [j for j in range(n) if j != i and len(targets[j]["boxes"])]
        if not donors:
            continue
        j = donors[int(torch.randint(len(donors), (), generator=generator))]
        picked = torch.randperm(len(targets[j]["boxes"]), generator=generator)[:max_objects].tolist()
        for k in picked:
            x1, y1, x2, y2 = (int(round(float(v))) for v in targets[j]["boxes"][k].clamp(min=0).tolist())
            x2, y2 = min(x2, width), min(y2, height)
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            patch = source[j, :, y1:y2, x1:x2]  # the donor as it came, before anything was pasted on it
            cut = (targets[j]["masks"][k, y1:y2, x1:x2].float() if "masks" in targets[j]
                   else torch.ones(y2 - y1, x2 - x1))
            scale = float(0.75 + 0.5 * torch.rand((), generator=generator))
            h, w = max(2, min(height, round((y2 - y1) * scale))), max(2, min(width, round((x2 - x1) * scale)))
            patch = F.interpolate(patch[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            cut = F.interpolate(cut[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0] >= 0.5
            if not cut.any():
                continue
            for _attempt in range(10):
                top = int(torch.randint(height - h + 1, (), generator=generator))
                left = int(torch.randint(width - w + 1, (), generator=generator))
                box = torch.tensor([[left, top, left + w, top + h]], dtype=torch.float32)
                boxes = out[i]["boxes"].float()
                if len(boxes):
                    lt = torch.maximum(boxes[:, :2], box[:, :2])
                    rb = torch.minimum(boxes[:, 2:], box[:, 2:])
                    if float((rb - lt).clamp(min=0).prod(dim=1).max()) > 0:
                        continue
                region = images[i, :, top : top + h, left : left + w]
                region[:, cut] = patch[:, cut]
                rows, cols = torch.nonzero(cut, as_tuple=True)
                tight = torch.tensor([[left + cols.min(), top + rows.min(), left + cols.max() + 1, top + rows.max() + 1]],
                                     dtype=out[i]["boxes"].dtype)
                out[i]["boxes"] = torch.cat([out[i]["boxes"].reshape(-1, 4), tight])
                out[i]["labels"] = torch.cat([out[i]["labels"], targets[j]["labels"][k : k + 1]])
                if "masks" in out[i]:
                    full = torch.zeros(1, height, width, dtype=torch.bool)
                    full[0, top : top + h, left : left + w] = cut
                    out[i]["masks"] = torch.cat([out[i]["masks"].reshape(-1, height, width).bool(), full])
                break
    return images, out


def keep_confident(
    detections: dict[str, torch.Tensor], score_threshold: float = 0.3, overlap_iou: float = 0.5
) -> dict[str, torch.Tensor]:
    """The detections to show as an answer (a pre-annotation): confident, one box per object.

    `decode` keeps a second-guess class at the same spot, which mAP rewards; a labeler should see
    only the best guess, so boxes overlapping a higher-scoring one by more than `overlap_iou` go,
    whatever their class.

    Args:
        detections: One image's `decode` output.
        score_threshold: Lowest score kept.
        overlap_iou: Class-agnostic non-maximum suppression IoU.

    Returns:
        The kept detections, still sorted by score.
    """
    from torchvision.ops import nms

    confident = detections["scores"] >= score_threshold
    kept = {key: value[confident] for key, value in detections.items()}
    order = nms(kept["boxes"], kept["scores"], overlap_iou)
    return {key: value[order] for key, value in kept.items()}


def _faster_rcnn(num_classes: int, pretrained: bool = False, weights: str | None = None) -> nn.Module:
    from components.networks.pretrained import FasterRCNNMobileNet

    return FasterRCNNMobileNet(num_classes, pretrained, weights)


DETECTORS = Networks("detector", {"centernet": CenterNet, "fasterrcnn_mobilenet": _faster_rcnn})
build_detector = DETECTORS.build  # a detector, by its name in params.yaml
