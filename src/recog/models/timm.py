"""Any timm architecture by name (``timm:<name>``), randomly initialised; pretrained weights come from
:mod:`recog.models.pretrained` (offline, from installed packages) or a local file, never a download.

timm models expose their classifier as ``get_classifier()`` and its input width as ``num_features``;
the builder records the classifier's dotted name as ``head_name`` so that :func:`recog.models.head`,
``replace_head`` and ``feature_width`` work on them as on every other model.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from recog.errors import ConfigError, did_you_mean


def _timm() -> Any:
    try:
        import timm
    except ImportError:  # a dependency of recog: only a broken install lacks it
        raise ConfigError("timm: models need the timm package, a dependency of recog: pip install timm") from None
    return timm


def list_timm(pattern: str) -> list[str]:
    return [f"timm:{n}" for n in _timm().list_models(pattern)]


def timm_model(name: str, num_classes: int, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=…, in_chans=…)``; builder arguments
    (``drop_rate``, ``drop_path_rate``…) pass through."""
    timm = _timm()
    if name not in timm.list_models():
        hint = did_you_mean(name, timm.list_models(), "; did you mean 'timm:{}'?")
        raise ConfigError(f"unknown timm model {name!r}{hint} (recog models 'timm:*' lists them)")
    if kwargs.get("pretrained"):
        raise ConfigError("timm: models are built here without downloading: give --pretrained NAME (offline "
                          "weights, recog models --pretrained) or --pretrained PATH")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"timm:{name}: {exc}") from None
    classifier = model.get_classifier()
    names = [n for n, m in model.named_modules() if m is classifier]
    if not names or not isinstance(classifier, nn.Linear):
        raise ConfigError(f"timm:{name} has no linear classifier head that recog can replace")
    model.head_name = names[0]
    return model
