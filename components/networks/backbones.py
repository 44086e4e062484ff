"""A network's backbone: the part that maps an image to one feature vector, which self-supervised
pretraining learns and every task type's network starts from."""

from __future__ import annotations

import torch
from torch import nn


def backbone_of(net: nn.Module) -> nn.Module | None:
    """The part of a network that maps images to one feature vector each (`features`), if it has one."""
    features = getattr(net, "features", None)
    return features if isinstance(features, nn.Module) else None


def load_backbone(net: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Put pretrained weights into `net`'s backbone. False (and `net` unchanged) when they do not fit it."""
    backbone = backbone_of(net)
    if backbone is None:
        return False
    current = backbone.state_dict()
    if current.keys() != state.keys() or any(current[k].shape != state[k].shape for k in state):
        return False  # checked first: load_state_dict would copy the tensors that fit before it refuses
    backbone.load_state_dict(state)
    return True
