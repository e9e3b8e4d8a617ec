"""Models are builder functions registered by name.

A builder takes ``num_classes``, ``in_channels``, ``image_size`` and its own keyword arguments and
returns an ``nn.Module``. :func:`create_model` drops keyword arguments that are ``None`` so that an
unset option falls through to the builder's default. ``tv:<name>`` builds any torchvision
classification model, ``timm:<name>`` any timm architecture; ``fusion:<name>`` that model's features fused with a text embedding
(:mod:`recog.models.fusion`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import inspect
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from recog.config import FUSION_PREFIX, is_fusion
from recog.device import eval_mode
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
    """Registered names matching a glob pattern; ``tv:*`` patterns list torchvision classifiers,
    ``timm:*`` timm's architectures."""
    if pattern.startswith("timm:"):
        from recog.models.timm import list_timm

        return list_timm(pattern[len("timm:"):])
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
    if name.startswith("timm:"):
        from recog.models.timm import timm_model

        return timm_model(name[len("timm:"):], num_classes, in_channels, image_size, **kwargs)
    if is_fusion(name):  # the image model as usual, its head replaced by the fusion layers
        from recog.models.fusion import FUSION_ARGS, FusionNet

        image_name = name[len(FUSION_PREFIX):]
        if not image_name or is_fusion(image_name):
            raise ConfigError(f"{name}: give an image model after 'fusion:', e.g. fusion:airnet")
        fusion_args = {k: kwargs.pop(k) for k in FUSION_ARGS if k in kwargs}
        image = create_model(image_name, num_classes, in_channels, image_size, **kwargs)
        features = head(image)[1].in_features
        replace_head(image, nn.Identity())
        return FusionNet(image, features, num_classes, **fusion_args)
    if name not in _REGISTRY:
        hint = did_you_mean(name, _REGISTRY)
        raise ConfigError(f"unknown model {name!r}{hint} (known: {', '.join(sorted(_REGISTRY))}, tv:<name>, timm:<name> or fusion:<name>)")
    builder = _REGISTRY[name]
    accepted = set(inspect.signature(builder).parameters)
    for key in kwargs:
        if key not in accepted:
            hint = did_you_mean(key, sorted(accepted))
            raise ConfigError(f"model {name!r} takes no argument {key!r}{hint}")
    try:
        return builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # e.g. widths: [[64], [128]] where numbers are expected
        shown_args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())[:200]
        raise ConfigError(f"model {name!r} cannot be built with model_args {shown_args}: {exc}") from None


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
    model.head_name = name  # the head is now this module, even if it holds linear layers of its own (a text head)
    return new


@contextlib.contextmanager
def headless(model: nn.Module) -> Iterator[nn.Module]:
    """The model without its head (an identity in its place: it gives the pooled features) for the
    ``with`` block; the head, and its name, are put back afterwards whatever happens."""
    name, old = head(model)
    replace_head(model, nn.Identity())
    try:
        yield model
    finally:
        replace_head(model, old)
        model.head_name = name


def conv_maps(model: nn.Module, in_channels: int, image_size: int) -> list[tuple[str, tuple[int, int]]]:
    """(name, output h×w) of the model's convolutions in the order they run on one image, leaving
    out patch embeddings (kernel = stride > 1: a vision transformer's only conv is one; its "map" is
    the token grid, not a feature map that Grad-CAM can read)."""
    import torch

    found: list[tuple[str, tuple[int, int]]] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: found.append((n, tuple(out.shape[-2:]))))
             for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and not (m.kernel_size == m.stride and max(m.stride) > 1)]
    try:
        p = next(model.parameters())
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, in_channels, image_size, image_size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    return found


def cam_layer(model: nn.Module, in_channels: int, image_size: int, min_side: int = 7) -> tuple[str, tuple[int, int]]:
    """(name, map size) of the layer Grad-CAM reads by default: the deepest convolution whose output
    is at least ``min_side``×``min_side`` at this input size (the last convs of small-image nets give
    1×1..4×4 maps, which say nothing about where); when none is, the one with the largest map."""
    return choose_cam_layer(conv_maps(model, in_channels, image_size), min_side)


def choose_cam_layer(convs: list[tuple[str, tuple[int, int]]], min_side: int = 7) -> tuple[str, tuple[int, int]]:
    """:func:`cam_layer`'s rule on the (name, map size) list :func:`conv_maps` measured."""
    if not convs:
        raise ValueError("no convolution layer with a spatial map")
    large = [c for c in convs if min(c[1]) >= min_side]
    if large:
        return large[-1]
    return max(reversed(convs), key=lambda c: c[1][0] * c[1][1])


def model_stats(model: nn.Module, in_channels: int, image_size: int) -> tuple[int, int]:
    """(parameters, multiply-adds of one image's forward pass), counted by torch's FLOP counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    x = torch.zeros(1, in_channels, image_size, image_size)
    with torch.no_grad(), eval_mode(model), FlopCounterMode(display=False) as counter:
        model(x)
    return params, counter.get_total_flops() // 2
