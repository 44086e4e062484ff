"""The champion outside flywheel: ONNX and TorchScript files with the preprocessing inside.

An exported model takes what a user has after decoding a picture: uint8 RGB pixels, (N, H, W, 3), of
any height and width. Inside it scales them to [0, 1], resizes them to the model's input size
(bilinear, as flywheel's own preprocessing) and runs the inference model, so its outputs are what
the loop's model returns (class probabilities for classification; the detections, and masks, of
the box task types). A `model.json` beside the file names the input, the outputs and the labels.

Both formats are written at registration, logged with the model under `export/`, and by
`flywheel export`. ONNX is also what `flywheel serve-model` runs (ONNX Runtime answers a batch of
16 small images in 2.6 ms where eager PyTorch takes 3.7 ms, on one core; bench/RESULTS.md, "Serving").
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from components.core.errors import ExportError, SettingsError

FORMATS = ("onnx", "torchscript")
FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
INPUT = "images"
OPSET = 17


class Preprocessed(nn.Module):
    """uint8 (N, H, W, 3) RGB pixels -> the inference model's outputs: the preprocessing inside."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.image_size = int(model.image_size)

    def forward(self, images: torch.Tensor) -> Any:
        pixels = images.permute(0, 3, 1, 2).float() / 255.0
        size = self.image_size
        return self.model(F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False))


def output_names(model: nn.Module) -> list[str]:
    """The names of a model's outputs ("probabilities" for a classifier, else the model's own)."""
    return list(getattr(model, "output_names", ("probabilities",)))


def example_pixels(model: nn.Module, count: int = 2) -> torch.Tensor:
    """A batch of uint8 pixels of another size than the model's input (so the resize is traced)."""
    size = int(model.image_size)
    return torch.randint(0, 256, (count, size + 4, size + 6, 3), dtype=torch.uint8)


def to_onnx(model: nn.Module, path: Path) -> Path:
    """Write `model` with its preprocessing as ONNX (batch, height and width dynamic).

    Raises:
        ExportError: The model has an operation ONNX cannot express; the message says which.
    """
    wrapped = Preprocessed(model).eval()
    names = output_names(model)
    axes = {INPUT: {0: "batch", 1: "height", 2: "width"}, **{name: {0: "batch"} for name in names}}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
            torch.onnx.export(
                wrapped, (example_pixels(model),), str(path), input_names=[INPUT], output_names=names,
                dynamic_axes=axes, opset_version=OPSET, dynamo=False,
            )
    except Exception as e:  # noqa: BLE001 - any exporter failure is one message
        raise ExportError(f"{type(model).__name__} cannot be exported to ONNX: {' '.join(str(e).split())[:300]}") from e
    return path


def to_torchscript(model: nn.Module, path: Path) -> Path:
    """Write `model` with its preprocessing as TorchScript (traced)."""
    wrapped = Preprocessed(model).eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.jit.trace(wrapped, example_pixels(model), check_trace=False).save(str(path))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{type(model).__name__} cannot be traced to TorchScript: {' '.join(str(e).split())[:300]}") from e
    return path


def describe(model: nn.Module, fmt: str, source: str) -> dict[str, Any]:
    """What `<file>.json` says beside an exported file (`source`: the model version or run it is of)."""
    return {
        "model": source,
        "format": fmt,
        "file": FILES[fmt],
        "input": {"name": INPUT, "dtype": "uint8", "shape": ["batch", "height", "width", 3], "color": "RGB"},
        "outputs": output_names(model),
        "image_size": int(model.image_size),
        "labels": list(model.labels),
        "preprocessing": "inside: pixels / 255, bilinear resize to image_size x image_size, the model's normalization",
    }


def exports_onnx(model: nn.Module) -> bool:
    """Whether a model's task type exports to ONNX (the box task types decode with a sort the
    TorchScript-based ONNX exporter cannot write: they export to TorchScript only)."""
    return bool(getattr(model, "exports_onnx", True))


def export(model: nn.Module, formats: Sequence[str], out: Path, source: str) -> list[Path]:
    """Write each format of `model` into `out` with a card per format (`model.onnx.json`, ...).

    Raises:
        SettingsError: An unknown format.
        ExportError: A format the model cannot be written in.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise SettingsError(f"Unknown export format {', '.join(unknown)}: use {' or '.join(FORMATS)}.")
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    written = []
    for fmt in formats:
        path = out / FILES[fmt]
        (to_onnx if fmt == "onnx" else to_torchscript)(model, path)
        card = out / f"{FILES[fmt]}.json"
        card.write_text(json.dumps(describe(model, fmt, source), indent=2))
        written += [path, card]
    return written

