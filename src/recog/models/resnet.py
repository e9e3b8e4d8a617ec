"""ResNet-18 with a small-image stem (3x3 conv, stride 1, no max-pool), as used for CIFAR."""

from __future__ import annotations

from torch import nn

from recog.models.registry import register_model


@register_model
def resnet18(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem; keeps 32x32 inputs at full resolution until layer2."""
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model
