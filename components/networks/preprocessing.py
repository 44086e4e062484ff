"""What every network sees: images as float tensors in [0, 1], normalised by `MEAN` and `STD` inside
the network's input (the one preprocessing, shared by training, pretraining, prediction and serving)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from components.data.images import read_image

MEAN, STD = 0.5, 0.5
UNBOUNDED = 1 << 62  # no pixel limit: a snapshot's images were checked when they were versioned


def to_tensor(arrays: Sequence[np.ndarray], image_size: int) -> torch.Tensor:
    """Decoded images (S, S, 3 uint8) -> a float tensor (N, 3, S, S) in [0, 1]."""
    if not arrays:
        return torch.empty(0, 3, image_size, image_size)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255.0)


def load_images(paths: Sequence[Path], image_size: int) -> torch.Tensor:
    """Image files already checked readable (a snapshot's) -> a float tensor (N, 3, S, S) in [0, 1]:
    RGB, resized. The one preprocessing (`images.read_image`)."""
    return to_tensor([read_image(Path(p), image_size, max_pixels=UNBOUNDED) for p in paths], image_size)
