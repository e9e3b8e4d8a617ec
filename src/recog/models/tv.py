"""Any torchvision classification model by name (``tv:<name>``), randomly initialised.

Pretrained weights are never downloaded: pass ``--weights FILE`` with a local state dict.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recog.errors import ConfigError, did_you_mean


class RepeatChannels(nn.Module):
    """Feed a greyscale image to a model built for RGB by repeating the channel."""

    def __init__(self, model: nn.Module, repeats: int) -> None:
        super().__init__()
        self.model = model
        self.repeats = repeats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.repeat(1, self.repeats, 1, 1))


def torchvision_model(name: str, num_classes: int, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        hint = did_you_mean(name, known, "; did you mean 'tv:{}'?")
        raise ConfigError(f"unknown torchvision classification model {name!r}{hint}")
    if "weights" in kwargs:
        raise ConfigError("tv: models start from random weights here; pass a local file with --weights FILE")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_channels == 1:
        return RepeatChannels(model, 3)
    return model
