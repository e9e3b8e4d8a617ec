"""The article's network, exactly: conv 6@5x5, max-pool, conv 16@5x5, max-pool, fc 120, fc 84, fc classes.

Adapted only to the input: ``in_channels`` and the flattened size follow the image; inputs too
small for the unpadded convolutions and pools get 'same' padding. ``kernel_sizes``, ``channels``
and ``fc`` change the net for the article's FAQ question (how to choose kernel size and depth:
by experiment, e.g. ``recog tune``); their defaults are the article's net.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # the article's script forgot this import
from torch import nn

from recog.errors import ConfigError
from recog.models.registry import register_model


def _side_after(image_size: int, kernel_sizes: Sequence[int], pad: bool) -> int:
    side = image_size
    for k in kernel_sizes:
        side = (side if pad else side - k + 1) // 2  # conv, then a 2x2 max-pool
    return side


class SeedNet(nn.Module):
    """Conv-ReLU-pool blocks (``conv1``, ``conv2``…), then fully connected ReLU layers (``fc1``…) and
    the classifier ``fc{n}`` (the head)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 kernel_sizes: Sequence[int] = (5, 5), channels: Sequence[int] = (6, 16),
                 fc: Sequence[int] = (120, 84)) -> None:
        super().__init__()
        if len(kernel_sizes) != len(channels) or not channels:
            raise ConfigError(f"seednet: kernel_sizes {list(kernel_sizes)} and channels {list(channels)} need "
                              f"one entry per convolution, the same number of each")
        if any(k < 1 for k in kernel_sizes) or any(c < 1 for c in channels) or any(n < 1 for n in fc):
            raise ConfigError("seednet: kernel sizes, channels and fc widths must be positive")
        pad = _side_after(image_size, kernel_sizes, pad=False) < 1
        side = _side_after(image_size, kernel_sizes, pad)
        if side < 1:
            raise ConfigError(f"seednet: {len(channels)} conv-pool blocks leave nothing of a {image_size}px image")
        c_in = in_channels
        for i, (k, c) in enumerate(zip(kernel_sizes, channels), 1):
            setattr(self, f"conv{i}", nn.Conv2d(c_in, c, k, padding=k // 2 if pad else 0))
            c_in = c
        self.pool = nn.MaxPool2d(2, 2)
        widths = [c_in * side * side, *fc, num_classes]
        for i, (a, b) in enumerate(zip(widths, widths[1:]), 1):
            setattr(self, f"fc{i}", nn.Linear(a, b))
        self.convs = len(channels)
        self.fcs = len(widths) - 1
        self.head_name = f"fc{self.fcs}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.convs + 1):
            x = self.pool(F.relu(getattr(self, f"conv{i}")(x)))
        x = torch.flatten(x, 1)
        for i in range(1, self.fcs):
            x = F.relu(getattr(self, f"fc{i}")(x))
        return getattr(self, f"fc{self.fcs}")(x)


@register_model
def seednet(num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
            kernel_sizes: Sequence[int] = (5, 5), channels: Sequence[int] = (6, 16),
            fc: Sequence[int] = (120, 84)) -> nn.Module:
    """The article's LeNet-style net (SGD lr 0.001, momentum 0.9 in configs/seed-article.yaml);
    ``kernel_sizes``/``channels`` (one per conv-pool block) and ``fc`` widths change it."""
    return SeedNet(num_classes, in_channels, image_size, tuple(int(k) for k in kernel_sizes),
                   tuple(int(c) for c in channels), tuple(int(n) for n in fc))
