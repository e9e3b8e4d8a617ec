"""Batched augmentation on the training device: draw parameters, then call pure tensor kernels.

Every kernel takes a float batch (N, C, H, W) and its parameters and returns a new batch; the
random draws happen in :class:`BatchAugment` from an explicit generator, so an epoch's
augmentation is a function of (seed, epoch) and a resumed run sees the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images where ``mask`` (N,) is True."""
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int) -> torch.Tensor:
    """Shift each image by (dy, dx) pixels in [-pad, pad], filling with reflected pixels."""
    if pad == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = (pad - dy).view(n, 1) + torch.arange(h, device=x.device)  # (N, H) source rows
    cols = (pad - dx).view(n, 1) + torch.arange(w, device=x.device)  # (N, W) source columns
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chan = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chan, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def cutout(x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a ``size``-sided square centred at (cy, cx) in each image (clipped at the borders)."""
    n, _, h, w = x.shape
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    top, left = (cy - size // 2).view(n, 1, 1), (cx - size // 2).view(n, 1, 1)
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return x.masked_fill(inside.unsqueeze(1), 0.0)


@dataclass
class BatchAugment:
    flip: bool = False
    translate: int = 0
    cutout: int = 0

    @property
    def active(self) -> bool:
        return self.flip or self.translate > 0 or self.cutout > 0

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape

        def draw(low: int, high: int) -> torch.Tensor:
            return torch.randint(low, high, (n,), generator=generator).to(x.device)

        if self.flip:
            x = flip(x, draw(0, 2).bool())
        if self.translate:
            pad = min(self.translate, h - 1, w - 1)
            x = translate(x, draw(-pad, pad + 1), draw(-pad, pad + 1), pad)
        if self.cutout:
            x = cutout(x, draw(0, h), draw(0, w), self.cutout)
        return x
