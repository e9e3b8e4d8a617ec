"""Model registry and the model families (importing this package registers every family); a model's
classifier head and feature width can be read and replaced. Nothing here imports the data or the engine."""

from recog.models import airnet, resnet, seednet  # noqa: F401  (registers the builders)
from recog.models.registry import (
    cam_layer,
    choose_cam_layer,
    conv_maps,
    create_model,
    feature_width,
    head,
    headless,
    list_models,
    model_stats,
    register_model,
    replace_head,
)

__all__ = ["cam_layer", "choose_cam_layer", "conv_maps", "create_model", "feature_width", "head", "headless", "list_models", "model_stats",
           "register_model", "replace_head"]
