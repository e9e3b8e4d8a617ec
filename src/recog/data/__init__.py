"""Datasets as uint8 tensors, image decoding, the in-memory loader and batched augmentation."""

from recog.data.augment import BatchAugment
from recog.data.datasets import BUILTIN, BUILTIN_SHAPES, Dataset, Split, load_dataset
from recog.data.image import ImageReadError, load_image
from recog.data.loader import MemoryLoader, Normalize, channel_stats

__all__ = [
    "BUILTIN",
    "BUILTIN_SHAPES",
    "BatchAugment",
    "Dataset",
    "ImageReadError",
    "MemoryLoader",
    "Normalize",
    "Split",
    "channel_stats",
    "load_dataset",
    "load_image",
]
