"""A pretrained model cut in two for a partial fine-tune: a frozen trunk (images -> the activations at
a stage boundary, computed once and cached) and a trained tail (those activations -> logits: the last
``unfreeze`` stages, the pooling and the head). Both are views of the model's own modules: training
the tail trains the model, whose weights are then saved and read like any other run's.

Stages: timm's EfficientNet family (EfficientNet, -Lite, MobileNet-style ``blocks``): each block
stage, then the 1x1 ``conv_head`` + ``bn2`` as the last stage; torchvision's ResNets: ``layer1..4``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from recog.errors import ConfigError


class _Chain(nn.Module):
    """Modules applied in order, then ``finish`` (the tail's pooling and head)."""

    def __init__(self, modules: list[nn.Module], finish: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 head: nn.Module | None = None):
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self.finish = finish
        self.head = head  # the classifier ``finish`` applies: registered, so that its parameters are the tail's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            x = part(x)
        return x if self.finish is None else self.finish(x)


def _stages(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module], Callable[[torch.Tensor], torch.Tensor]]:
    """(the modules before the first stage, the stages in order, the pooling + head after the last)."""
    if type(model).__name__ == "EfficientNet" and isinstance(getattr(model, "blocks", None), nn.Sequential):
        return [model.conv_stem, model.bn1], [*model.blocks, nn.Sequential(model.conv_head, model.bn2)], \
            model.forward_head
    if all(hasattr(model, a) for a in ("conv1", "bn1", "relu", "maxpool", "layer4", "avgpool", "fc")):
        return ([model.conv1, model.bn1, model.relu, model.maxpool],
                [model.layer1, model.layer2, model.layer3, model.layer4],
                lambda x: model.fc(torch.flatten(model.avgpool(x), 1)))
    raise ConfigError(f"transfer partial: {type(model).__name__} cannot be cut into stages (supported: timm's "
                      "EfficientNet family, e.g. timm:tf_efficientnet_lite0, and torchvision's ResNets); use "
                      "--transfer probe or full")


def stage_count(model: nn.Module) -> int:
    """How many stages a partial fine-tune can unfreeze (all but the first stays frozen at least)."""
    return len(_stages(model)[1]) - 1


def split_model(model: nn.Module, unfreeze: int) -> tuple[nn.Module, nn.Module]:
    """(trunk, tail) with the last ``unfreeze`` stages in the tail."""
    stem, stages, finish = _stages(model)
    if not 1 <= unfreeze <= len(stages) - 1:
        raise ConfigError(f"unfreeze must be 1..{len(stages) - 1} for {type(model).__name__} (its trailing "
                          f"stages to train), got {unfreeze}")
    cut = len(stages) - unfreeze
    from recog.models import head

    return _Chain([*stem, *stages[:cut]]), _Chain(stages[cut:], finish, head(model)[1])
