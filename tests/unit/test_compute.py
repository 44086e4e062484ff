"""Where models run: params.yaml's `compute` resolved on this machine, the one function every device choice goes through."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from components.core.errors import SettingsError
from components.networks.compute import CPU, Compute, infer, resolve, to_cpu, torch_device, trainer_kwargs


def test_auto_takes_a_gpu_when_torch_sees_one_and_the_cpu_otherwise():
    assert resolve("auto", gpus=0) == Compute("cpu", 1, "32-true")
    assert resolve("auto", devices=2, precision="16-mixed", gpus=2) == Compute("gpu", 2, "16-mixed")
    assert resolve("auto", devices=4, gpus=1).devices == 1  # auto takes what there is
    assert resolve("cpu", gpus=4).accelerator == "cpu"  # asked for the CPU: the CPU
    assert resolve("auto").accelerator == ("gpu" if torch.cuda.device_count() else "cpu")  # this machine


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: resolve("gpu", gpus=0), r"compute.accelerator is gpu with devices 1, but torch sees 0 GPU\(s\).*auto or cpu"),
        (lambda: resolve("gpu", devices=4, gpus=2), r"devices 4, but torch sees 2 GPU"),
        (lambda: resolve("cpu", precision="16-mixed", gpus=0), r"16-mixed'? needs a GPU"),
        (lambda: resolve("tpu"), r"'tpu'; use one of cpu, gpu, auto"),
    ],
)
def test_a_device_this_machine_lacks_is_refused_with_what_to_set(call, message):
    with pytest.raises(SettingsError, match=message):
        call()


def test_lightning_gets_the_choice_and_models_answer_where_they_are():
    assert trainer_kwargs(CPU) == {"accelerator": "cpu", "devices": 1, "precision": "32-true"}
    assert trainer_kwargs(Compute("gpu", 4, "bf16-mixed"), devices=4)["devices"] == 4
    assert torch_device(CPU).type == "cpu" and torch_device(Compute("gpu")).type == "cuda"
    nested = to_cpu({"a": [torch.ones(2), (torch.zeros(1), "text")]})
    assert nested["a"][1][1] == "text" and isinstance(nested["a"][1], tuple)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 2)

        def both(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
            return {"scores": self.linear(x)}, x.sum(dim=1)

    net = Net()
    rows, sums = infer(net, net.both, torch.ones(4, 3))
    assert rows["scores"].shape == (4, 2) and not rows["scores"].requires_grad and sums.device.type == "cpu"


def test_the_shipped_params_run_on_the_cpu():
    from components.core.params import load_params
    from tests.conftest import ROOT

    c = load_params(ROOT / "params.yaml").compute
    assert resolve(c.accelerator, c.devices, c.precision) == CPU  # the tested default
