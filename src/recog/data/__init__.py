"""Data: sources by name, splits, image decoding, the in-memory and streaming loaders, batched augmentation.

Nothing here imports the models or the engine."""

from typing import Any

# Imported lazily (as ``recog`` itself): ``recog.data.image`` decodes with numpy and Pillow only, so
# that predicting with an ONNX file never imports torch.
_WHERE = {
    "BatchAugment": "augment", "BUILTIN": "builtin", "BUILTIN_SHAPES": "builtin", "ImageReadError": "image",
    "load_image": "image", "open_image": "image", "MemoryLoader": "loader", "Normalize": "loader",
    "channel_stats": "loader", "Probe": "sources", "list_sources": "sources", "load_dataset": "sources",
    "probe_dataset": "sources", "register_source": "sources", "Dataset": "splits", "FileSplit": "splits",
    "Split": "splits",
}

__all__ = [
    "BUILTIN",
    "BUILTIN_SHAPES",
    "BatchAugment",
    "Dataset",
    "FileSplit",
    "ImageReadError",
    "MemoryLoader",
    "Probe",
    "Normalize",
    "Split",
    "channel_stats",
    "list_sources",
    "load_dataset",
    "load_image",
    "open_image",
    "probe_dataset",
    "register_source",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"recog.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'recog.data' has no attribute {name!r}")
