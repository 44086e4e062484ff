"""Draw a box (or click), get the mask: the answer to a smart tool.

Before the project's own assistant has seen enough masks, a classical answer: OpenCV's GrabCut
seeded by the box (everything outside it background), with the person's clicks as certain foreground
(positive) or background (negative). Its mask IoU from the true box, with no mask labeled yet, is
`assist_mask_iou_0` (bench). The learned assistant takes over once it measures better.
"""

from __future__ import annotations

import numpy as np

from components.production.ml_backend import Prompt

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
