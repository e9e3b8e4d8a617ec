"""recog: fast, practical image recognition with PyTorch.

The public API is imported lazily, so that ``import recog`` and ``recog --help`` stay fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("train", "evaluate", "predict", "load", "Run", "Classifier")
_FEATURES = ("explain",)
_MODELS = ("create_model", "list_models", "register_model")
__all__ = [*_API, *_FEATURES, *_MODELS, "TrainConfig", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from recog import api

        return getattr(api, name)
    if name in _FEATURES:
        from recog import explanations  # not recog/explain.py: a submodule would shadow the function

        return explanations.explain
    if name in _MODELS:
        from recog import models

        return getattr(models, name)
    if name == "TrainConfig":
        from recog.config import TrainConfig

        return TrainConfig
    raise AttributeError(f"module 'recog' has no attribute {name!r}")
