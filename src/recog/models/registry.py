"""Models are builder functions registered by name.

A builder takes ``num_classes``, ``in_channels``, ``image_size`` and its own keyword arguments and
returns an ``nn.Module``. :func:`create_model` drops keyword arguments that are ``None`` so that an
unset option falls through to the builder's default. ``tv:<name>`` builds any torchvision
classification model.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from recog.errors import ConfigError, did_you_mean

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Builder] = {}


def register_model(fn: Builder) -> Builder:
    """Register ``fn`` under its name; a duplicate name raises."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a glob pattern; ``tv:*`` patterns list torchvision classifiers."""
    if pattern.startswith("tv:"):
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
        return sorted(f"tv:{n}" for n in names if fnmatch.fnmatch(f"tv:{n}", pattern))
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def create_model(
    name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **kwargs: Any
) -> nn.Module:
    """Build a model by name. Unknown names and unknown keyword arguments raise naming the closest."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if name.startswith("tv:"):
        from recog.models.tv import torchvision_model

        return torchvision_model(name[3:], num_classes, in_channels, image_size, **kwargs)
    if name not in _REGISTRY:
        hint = did_you_mean(name, _REGISTRY)
        raise ConfigError(f"unknown model {name!r}{hint} (known: {', '.join(sorted(_REGISTRY))}, or tv:<name>)")
    builder = _REGISTRY[name]
    accepted = set(inspect.signature(builder).parameters)
    for key in kwargs:
        if key not in accepted:
            hint = did_you_mean(key, sorted(accepted))
            raise ConfigError(f"model {name!r} takes no argument {key!r}{hint}")
    return builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)


def head(model: nn.Module) -> tuple[str, nn.Linear]:
    """(dotted name, layer) of the model's classifier head: the layer its ``head_name`` names, else
    its last ``nn.Linear``. Fine-tuning with other classes, multi-label and text heads replace it."""
    name = getattr(model, "head_name", None)
    if name is None:
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{type(model).__name__} has no linear classifier head")
        name = linears[-1][0]
    return name, model.get_submodule(name)


def feature_width(model: nn.Module) -> int:
    """The width of the features the head reads (its input size)."""
    return head(model)[1].in_features


def replace_head(model: nn.Module, new: int | nn.Module) -> nn.Module:
    """Put ``new`` (a module, or a number of outputs for a fresh linear layer like the old one) in
    place of the head; returns the new head."""
    name, old = head(model)
    if isinstance(new, int):
        new = nn.Linear(old.in_features, new, bias=old.bias is not None).to(old.weight.device, old.weight.dtype)
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    return new


def cam_layer(model: nn.Module) -> nn.Module:
    """The layer whose activations explanations (Grad-CAM) use: the model's ``cam_layer`` or its last conv."""
    named = getattr(model, "cam_layer", None)
    if isinstance(named, nn.Module):
        return named
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no convolution layer")
    return convs[-1]


def model_stats(model: nn.Module, in_channels: int, image_size: int) -> tuple[int, int]:
    """(parameters, multiply-adds of one image's forward pass), counted by torch's FLOP counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_channels, image_size, image_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return params, counter.get_total_flops() // 2
