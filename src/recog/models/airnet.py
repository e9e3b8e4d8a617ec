"""A fast CIFAR-style net after the airbench speed-run family.

A stem conv, then groups of (conv - max-pool - batch-norm - GELU - conv - batch-norm - GELU),
a global max-pool and a linear head scaled down (airbench's ``1/9``: it keeps the logits
small at init so that label smoothing and a high learning rate stay stable).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recog.errors import ConfigError
from recog.models.registry import register_model


def _norm(channels: int, momentum: float, learn_scale: bool) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, momentum=momentum, eps=1e-12 if not learn_scale else 1e-5)
    norm.weight.requires_grad = learn_scale  # airbench: a fixed scale of 1, only the bias learns
    return norm


def _conv(c_in: int, c_out: int, dirac: bool, kernel_size: int = 3) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False)
    if dirac:  # the first c_in filters start as identities: the block starts close to a skip connection
        with torch.no_grad():
            nn.init.dirac_(conv.weight[: min(c_in, c_out)])
    return conv


class ConvGroup(nn.Module):
    """conv - max-pool - batch-norm - GELU, then ``depth - 1`` times conv - batch-norm - GELU."""

    def __init__(self, c_in: int, c_out: int, pool: bool = True, bn_momentum: float = 0.1,
                 learn_scale: bool = True, dirac: bool = False, kernel_size: int = 3, depth: int = 2) -> None:
        super().__init__()
        self.depth = depth
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        for i in range(1, depth + 1):  # conv1, norm1, conv2, norm2…: the names of the weights files
            setattr(self, f"conv{i}", _conv(c_in if i == 1 else c_out, c_out, dirac, kernel_size))
            setattr(self, f"norm{i}", _norm(c_out, bn_momentum, learn_scale))
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        for i in range(2, self.depth + 1):
            x = self.act(getattr(self, f"norm{i}")(getattr(self, f"conv{i}")(x)))
        return x


class AirNet(nn.Module):
    """``stem="whiten"`` is airbench's: a frozen 2x2 convolution (no padding) whose filters whiten
    image patches, initialised from the training images by :meth:`data_init`."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        widths: Sequence[int] = (64, 256, 256),
        stem_width: int = 24,
        scale: float = 1 / 9,
        stem: str = "conv",
        bn_momentum: float = 0.1,
        learn_scale: bool = True,
        dirac: bool = False,
        kernel_size: int = 3,
        depth: int = 2,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        if stem_stride < 1:
            raise ConfigError(f"airnet: stem_stride must be at least 1, got {stem_stride}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"airnet: kernel_size must be odd (3, 5, 7…) to keep the map size, got {kernel_size}")
        if depth < 1:
            raise ConfigError(f"airnet: depth (convolutions per group) must be at least 1, got {depth}")
        if not widths or any(int(w) < 1 for w in widths):
            raise ConfigError(f"airnet: widths must be positive channel counts, got {list(widths)}")
        # stride 1: airbench's overlapping 2x2 patches; stride s > 1 (photos): s x s patches side by
        # side, so that the groups see a small map (e.g. 128 px / 4 = 32) and cost what they cost at 32 px
        patch = 2 if stem_stride == 1 else stem_stride
        if stem == "whiten":
            stem_width = 2 * in_channels * patch**2  # each whitening direction with both signs
            self.whiten = nn.Conv2d(in_channels, stem_width, patch, stride=stem_stride, padding=0, bias=True)
            self.whiten.weight.requires_grad = False
            self.stem = nn.Sequential(self.whiten, nn.GELU())
            side = image_size - 1 if stem_stride == 1 else image_size // stem_stride
        elif stem == "conv":
            kernel, pad = (3, 1) if stem_stride == 1 else (stem_stride, 0)
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, stem_width, kernel, stride=stem_stride, padding=pad, bias=False),
                nn.BatchNorm2d(stem_width),
                nn.GELU(),
            )
            side = image_size // stem_stride
        else:
            raise ValueError(f"stem must be 'conv' or 'whiten', got {stem!r}")
        groups, c_in = [], stem_width
        for width in widths:
            pool = side >= 2  # never pool a 1x1 map (small inputs such as 8x8 digits)
            groups.append(ConvGroup(c_in, width, pool, bn_momentum, learn_scale, dirac, kernel_size, depth))
            c_in, side = width, side // 2 if pool else side
        self.groups = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(c_in, num_classes, bias=False)  # read and replaced by models.replace_head
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.stem(x))
        return self.head(torch.flatten(self.pool(x), 1)) * self.scale

    def freeze_stem(self) -> None:
        """Stop training the stem (``--freeze-stem-epochs``; airbench freezes the whitening bias
        after 3 epochs): backward then stops at the first group."""
        for p in self.stem.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def data_init(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Whitening stem: filters are the eigenvectors of the 2x2 patch covariance of (normalised)
        training images, scaled by 1/sqrt(eigenvalue), with both signs. No-op for the conv stem."""
        if not hasattr(self, "whiten"):
            return
        c, (h, w), step = images.shape[1], self.whiten.weight.shape[2:], self.whiten.stride[0]
        patches = images.float().unfold(2, h, step).unfold(3, w, step).transpose(1, 3).reshape(-1, c * h * w)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = eigenvectors.T.reshape(-1, c, h, w) / torch.sqrt(eigenvalues.view(-1, 1, 1, 1) + eps)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))


@register_model
def airnet(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    widths: Sequence[int] = (64, 256, 256),
    stem_width: int = 24,
    stem: str = "conv",
    bn_momentum: float = 0.1,
    learn_scale: bool = True,
    dirac: bool = False,
    kernel_size: int = 3,
    depth: int = 2,
    stem_stride: int = 1,
) -> nn.Module:
    """airbench-style conv-pool-BN-GELU net; ``widths`` sets the channels of each group, ``depth`` the
    convolutions per group and ``kernel_size`` their (odd) size; ``stem_stride`` s > 1 makes the stem
    s x s patches side by side (photos: the planner sets it so that the groups see ~32 px).
    ``stem="whiten", bn_momentum=0.4, learn_scale=False, dirac=True`` is airbench94's net."""
    return AirNet(num_classes, in_channels, image_size, tuple(int(w) for w in widths), int(stem_width),
                  stem=stem, bn_momentum=float(bn_momentum), learn_scale=bool(learn_scale), dirac=bool(dirac),
                  kernel_size=int(kernel_size), depth=int(depth), stem_stride=int(stem_stride))


@register_model
def airnet_small(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """airnet with widths (32, 64, 128): a quick model for small data and tests."""
    return AirNet(num_classes, in_channels, image_size, (32, 64, 128), 16)
