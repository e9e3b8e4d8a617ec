"""Model registry and the model families. Importing this package registers every family."""

from recog.models import airnet, resnet, seednet  # noqa: F401  (registers the builders)
from recog.models.registry import cam_layer, create_model, list_models, model_stats, register_model

__all__ = ["cam_layer", "create_model", "list_models", "model_stats", "register_model"]
