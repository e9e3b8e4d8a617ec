"""Data: sources by name, splits, image decoding, the in-memory and streaming loaders, batched augmentation.

Nothing here imports the models or the engine."""

from recog.data.augment import BatchAugment
from recog.data.builtin import BUILTIN, BUILTIN_SHAPES
from recog.data.image import ImageReadError, load_image, open_image
from recog.data.loader import MemoryLoader, Normalize, channel_stats
from recog.data.sources import Probe, list_sources, load_dataset, probe_dataset, register_source
from recog.data.splits import Dataset, FileSplit, Split

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
