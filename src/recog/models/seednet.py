"""The article's network, exactly: conv 6@5x5, max-pool, conv 16@5x5, max-pool, fc 120, fc 84, fc classes.

Adapted only to the input: ``in_channels`` and the flattened size follow the image; inputs too
small for two unpadded 5x5 convolutions and two pools (under 16 px) get padding 2 ('same').
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # the article's script forgot this import
from torch import nn

from recog.models.registry import register_model


class SeedNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        unpadded = ((image_size - 4) // 2 - 4) // 2
        pad = 0 if unpadded >= 1 else 2
        side = unpadded if pad == 0 else image_size // 4
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=pad)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=pad)
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.cam_layer = self.conv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@register_model
def seednet(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """The article's LeNet-style net (SGD lr 0.001, momentum 0.9 in configs/seed-article.yaml)."""
    return SeedNet(num_classes, in_channels, image_size)
