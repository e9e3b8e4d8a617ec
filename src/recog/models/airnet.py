"""A fast CIFAR-style net after the airbench speed-run family.

A stem conv, then groups of (conv - max-pool - batch-norm - GELU - conv - batch-norm - GELU),
a global max-pool and a linear head scaled down (airbench's ``1/9``: it keeps the logits
small at init so that label smoothing and a high learning rate stay stable).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recog.models.registry import register_model


class ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int, pool: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.norm1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(c_out)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class AirNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        widths: Sequence[int] = (64, 256, 256),
        stem_width: int = 24,
        scale: float = 1 / 9,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.GELU(),
        )
        groups, c_in, side = [], stem_width, image_size
        for width in widths:
            pool = side >= 2  # never pool a 1x1 map (small inputs such as 8x8 digits)
            groups.append(ConvGroup(c_in, width, pool))
            c_in, side = width, side // 2 if pool else side
        self.groups = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(c_in, num_classes, bias=False)
        self.scale = scale
        self.cam_layer = self.groups[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.stem(x))
        return self.head(torch.flatten(self.pool(x), 1)) * self.scale


@register_model
def airnet(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    widths: Sequence[int] = (64, 256, 256),
    stem_width: int = 24,
) -> nn.Module:
    """airbench-style conv-pool-BN-GELU net; ``widths`` sets the channels of each group."""
    return AirNet(num_classes, in_channels, image_size, tuple(int(w) for w in widths), int(stem_width))


@register_model
def airnet_small(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """airnet with widths (32, 64, 128): a quick model for small data and tests."""
    return AirNet(num_classes, in_channels, image_size, (32, 64, 128), 16)
