"""recog: fast, practical image recognition with PyTorch.

The public API is imported lazily, so that ``import recog`` and ``recog --help`` stay fast.
"""

from __future__ import annotations

from typing import Any

from recog._version import __version__

_API = ("train", "evaluate", "predict", "load", "Run", "Classifier")
_FEATURES = {"explain": "explanations", "tune": "tuning", "lr_find": "lr_range"}  # function: its module
_MODELS = ("create_model", "list_models", "register_model")
__all__ = [*_API, *_FEATURES, *_MODELS, "TrainConfig", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from recog import api

        return getattr(api, name)
    if name in _FEATURES:  # modules named apart from their function: recog/explain.py would shadow recog.explain
        import importlib

        return getattr(importlib.import_module(f"recog.{_FEATURES[name]}"), name)
    if name in _MODELS:
        from recog import models

        return getattr(models, name)
    if name == "TrainConfig":
        from recog.config import TrainConfig

        return TrainConfig
    raise AttributeError(f"module 'recog' has no attribute {name!r}")
