"""Draw a box (or click), get the mask: the answer to a smart tool.

Two answers, and the one that measures better on the project's own masks is used (`better_of`):

- **learned**: the project's segmenter (the loop's champion, trained on the masks people drew) runs its
  class-agnostic mask head on the box the person drew (`SegmentationModel.masks_of_boxes`);
- **classical**, before the project has a segmenter or while GrabCut measures better: OpenCV's GrabCut
  seeded by the box (everything outside it background), with the person's clicks as certain foreground
  (positive) or background (negative). Clicks alone always get GrabCut (the mask head reads boxes).

Their mask IoU from the true box on held-out objects is `assist_mask_iou_0` / `assist_mask_iou_50` (bench).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.data.images import decode_image
from components.data.masks import mask_iou, mask_of_coco
from components.production.ml_backend import Prompt

ASSIST_SIDE = 512  # GrabCut works on the image scaled to this longer side (a 12 MP photo answers in ~0.2 s)
MEASURE_OBJECTS = 40  # the learned answer is measured against GrabCut on this many of the snapshot's validation masks
CLICK_RADIUS = 0.02  # a click marks a disc of this share of the image's shorter side
MARGIN = 0.1  # clicks without a box: the box around them, grown by this share of its size


def box_of(prompt: Prompt) -> tuple[int, int, int, int]:
    """The prompt's box in whole pixels inside the image: the one drawn, else around the positive clicks."""
    if prompt.box is not None:
        x1, y1, x2, y2 = prompt.box
    else:
        xs = [x for x, _ in prompt.positive] or [prompt.width / 2]
        ys = [y for _, y in prompt.positive] or [prompt.height / 2]
        pad = max(MARGIN * max(max(xs) - min(xs), max(ys) - min(ys)), 0.1 * min(prompt.width, prompt.height))
        x1, y1, x2, y2 = min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad
    x1, y1 = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
    x2, y2 = min(prompt.width, int(np.ceil(x2))), min(prompt.height, int(np.ceil(y2)))
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


def grabcut(image: np.ndarray, prompt: Prompt, iterations: int = 4) -> np.ndarray:
    """The object's mask (height, width) from GrabCut seeded by the prompt.

    Args:
        image: (height, width, 3) uint8 RGB, the size the prompt is in.
        prompt: The box and clicks.
        iterations: GrabCut's rounds.
    """
    import cv2

    height, width = image.shape[:2]
    x1, y1, x2, y2 = box_of(prompt)
    mask = np.full((height, width), cv2.GC_BGD, np.uint8)
    mask[y1:y2, x1:x2] = cv2.GC_PR_FGD
    radius = max(1, int(CLICK_RADIUS * min(width, height)))
    for points, value in ((prompt.positive, cv2.GC_FGD), (prompt.negative, cv2.GC_BGD)):
        for x, y in points:
            cv2.circle(mask, (int(x), int(y)), radius, int(value), thickness=-1)
    if (x2 - x1) < 3 or (y2 - y1) < 3:
        return mask == cv2.GC_PR_FGD  # too small to model: the box itself
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    bgr = np.ascontiguousarray(image[..., ::-1])
    try:
        cv2.grabCut(bgr, mask, None, background, foreground, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # a box of one colour: nothing to model, the box is the answer
        return (mask == cv2.GC_PR_FGD) | (mask == cv2.GC_FGD)
    found = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    return found if found.any() else np.zeros_like(found)


def learned(model: Any, pixels: np.ndarray, prompt: Prompt) -> tuple[np.ndarray, float]:
    """The segmenter's mask for the prompt's box, on the image's own size, and its mean confidence.

    Args:
        model: A `SegmentationModel` (the champion).
        pixels: The image as the model takes it, (S, S, 3) uint8.
        prompt: The box, in the image's pixels (`prompt.width` x `prompt.height`).
    """
    from components.networks.compute import infer
    from components.networks.preprocessing import to_tensor
    from components.tasks.segmentation import paste

    size = int(model.image_size)
    sx, sy = size / prompt.width, size / prompt.height
    x1, y1, x2, y2 = prompt.box  # type: ignore[misc]
    boxes = torch.tensor([[x1 * sx, y1 * sy, x2 * sx, y2 * sy]], dtype=torch.float32)
    model.eval()
    probabilities = infer(model, lambda image: model.masks_of_boxes(image, boxes.to(image.device)), to_tensor([pixels], size))
    mask = paste(probabilities, boxes, size, prompt.width, prompt.height)[0]
    inside = probabilities[probabilities >= 0.5]
    return mask, float(inside.mean()) if len(inside) else 0.0


def scaled(prompt: Prompt, sx: float, sy: float) -> Prompt:
    """The prompt on the image scaled by (sx, sy)."""
    box = None if prompt.box is None else (prompt.box[0] * sx, prompt.box[1] * sy, prompt.box[2] * sx, prompt.box[3] * sy)
    return Prompt(prompt.label, box, tuple((x * sx, y * sy) for x, y in prompt.positive),
                  tuple((x * sx, y * sy) for x, y in prompt.negative), round(prompt.width * sx), round(prompt.height * sy))


def enlarged(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A mask found on a scaled image, back at the image's own size (the size Label Studio's regions are in)."""
    if mask.shape == (height, width):
        return mask
    import cv2

    return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)


def grabcut_answer(image: Path, prompt: Prompt, max_pixels: int) -> np.ndarray:
    """GrabCut's mask for the prompt on an image file, at the prompt's image size."""
    pixels, _, _ = decode_image(image, ASSIST_SIDE, max_pixels, keep_aspect=True)
    small = scaled(prompt, pixels.shape[1] / prompt.width, pixels.shape[0] / prompt.height)
    return enlarged(grabcut(pixels, small), prompt.width, prompt.height)


def learned_answer(model: Any, image: Path, prompt: Prompt, max_pixels: int) -> tuple[np.ndarray, float]:
    """The segmenter's mask for the prompt's box on an image file, and its confidence."""
    pixels, _, _ = decode_image(image, int(model.image_size), max_pixels)
    return learned(model, pixels, prompt)


@dataclass(frozen=True)
class Measured:
    """Both answers' mean mask IoU from the true box, on the project's own validation masks.

    Attributes:
        learned: The segmenter's.
        grabcut: GrabCut's.
        objects: How many masks were measured (0: none yet, GrabCut answers).
    """

    learned: float
    grabcut: float
    objects: int

    @property
    def use_learned(self) -> bool:
        """The switch-over: the learned answer once it measures at least as well as GrabCut."""
        return self.objects > 0 and self.learned >= self.grabcut


def measure(model: Any, samples: Sequence[tuple[Path, dict[str, Any]]], max_pixels: int) -> Measured:
    """Ask both answers for each true object's mask from its own box (the first MEASURE_OBJECTS objects).

    Args:
        model: The project's segmenter (`SegmentationModel`).
        samples: (image file, target) of validation images; a target as the manifest holds it
            (`{"width", "height", "boxes": [{"label", "x", "y", "w", "h", "mask"}]}`).
        max_pixels: params.yaml `images.max_pixels`.
    """
    ious: list[tuple[float, float]] = []
    for image, target in samples:
        width, height = int(target["width"]), int(target["height"])
        for obj in target["boxes"]:
            if len(ious) >= MEASURE_OBJECTS:
                break
            box = (float(obj["x"]), float(obj["y"]), float(obj["x"] + obj["w"]), float(obj["y"] + obj["h"]))
            prompt = Prompt(str(obj["label"]), box, (), (), width, height)
            truth = mask_of_coco(obj["mask"], width, height)[None]
            mine, _ = learned_answer(model, image, prompt, max_pixels)
            ious.append((float(mask_iou(mine[None], truth)[0, 0]), float(mask_iou(grabcut_answer(image, prompt, max_pixels)[None], truth)[0, 0])))
    if not ious:
        return Measured(0.0, 0.0, 0)
    learned_iou, grabcut_iou = np.mean(ious, axis=0)
    return Measured(round(float(learned_iou), 4), round(float(grabcut_iou), 4), len(ious))
