"""Where models run: the one place params.yaml's `compute` becomes a device.

Training, pretraining and the label check hand `trainer_kwargs` to Lightning; write-back and serving
move the model to `torch_device` and read it through `infer`, which moves each batch there and the
answer back. CPU is the default and what the tests run; `auto` takes a GPU when torch sees one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from components.core.errors import SettingsError

T = TypeVar("T")
ACCELERATORS = ("cpu", "gpu", "auto")


@dataclass(frozen=True)
class Compute:
    """A resolved device choice.

    Attributes:
        accelerator: "cpu" or "gpu" (never "auto": resolved against this machine).
        devices: How many the scheduled retrain spreads over (Lightning's DDP when more than 1).
        precision: Lightning's precision ("32-true"; on a GPU e.g. "16-mixed" or "bf16-mixed").
    """

    accelerator: str = "cpu"
    devices: int = 1
    precision: str = "32-true"


CPU = Compute()


def resolve(accelerator: str, devices: int = 1, precision: str = "32-true", gpus: int | None = None) -> Compute:
    """params.yaml's `compute` on this machine: `auto` is a GPU when torch sees one (as many as there
    are, up to `devices`), else the CPU.

    Args:
        accelerator: cpu, gpu or auto.
        devices: Devices for the scheduled retrain.
        precision: Lightning's precision.
        gpus: GPUs visible (default: `torch.cuda.device_count()`).

    Raises:
        SettingsError: `gpu` (or more GPUs than there are) on a machine without them; a half precision on the CPU.
    """
    if accelerator not in ACCELERATORS:
        raise SettingsError(f"compute.accelerator is {accelerator!r}; use one of {', '.join(ACCELERATORS)} in params.yaml.")
    visible = torch.cuda.device_count() if gpus is None else gpus
    chosen = ("gpu" if visible else "cpu") if accelerator == "auto" else accelerator
    if accelerator == "auto" and chosen == "gpu":
        devices = min(devices, visible)  # auto takes what there is
    if chosen == "gpu" and visible < devices:
        raise SettingsError(
            f"compute.accelerator is gpu with devices {devices}, but torch sees {visible} GPU(s) "
            "(torch.cuda.device_count()). Set compute.accelerator to auto or cpu in params.yaml, or install a CUDA build of torch."
        )
    if chosen == "cpu" and precision.startswith("16"):
        raise SettingsError(f"compute.precision {precision!r} needs a GPU; on the CPU use 32-true (or bf16-mixed).")
    return Compute(chosen, devices, precision)


def trainer_kwargs(compute: Compute, devices: int = 1) -> dict[str, Any]:
    """Lightning Trainer arguments for `devices` of the chosen kind (1 unless the scheduled retrain)."""
    return {"accelerator": compute.accelerator, "devices": devices, "precision": compute.precision}


def torch_device(compute: Compute) -> torch.device:
    """Where a model answers (write-back, serving): the first GPU or the CPU."""
    return torch.device("cuda" if compute.accelerator == "gpu" else "cpu")


def device_of(model: nn.Module) -> torch.device:
    """The device a model's weights are on (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def to_cpu(tree: T) -> T:
    """Every tensor in nested tuples, lists and dicts, on the CPU."""
    if isinstance(tree, torch.Tensor):
        return tree.cpu()  # type: ignore[return-value]
    if isinstance(tree, dict):
        return {k: to_cpu(v) for k, v in tree.items()}  # type: ignore[return-value]
    if isinstance(tree, list | tuple):
        return type(tree)(to_cpu(v) for v in tree)  # type: ignore[return-value]
    return tree


def infer(model: nn.Module, call: Callable[[torch.Tensor], T], images: torch.Tensor) -> T:
    """`call(images)` (a method of `model`) on the device `model` is on: the batch moved there, the answer back to the CPU."""
    with torch.no_grad():
        return to_cpu(call(images.to(device_of(model))))
