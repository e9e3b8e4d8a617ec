"""Batched augmentation on the training device: draw parameters, then call pure tensor kernels.

Every kernel takes a float batch (N, C, H, W) and its parameters and returns a new batch; the
random draws happen in :class:`BatchAugment` from an explicit generator, so an epoch's
augmentation is a function of (seed, epoch) and a resumed run sees the same images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recog.config import CROP_SCALE


def flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images where ``mask`` (N,) is True."""
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def alternating_flip_mask(index: torch.Tensor, epoch: int, seed: int = 0) -> torch.Tensor:
    """airbench's alternating flip: a fixed pseudo-random half of the images (by dataset index) is
    flipped in even epochs and the other half in odd ones, so every image is seen both ways every
    two epochs instead of by chance."""
    bits = ((index.long() * 2654435761 + seed * 40503) >> 11) & 1
    return (bits ^ (epoch & 1)).bool()


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
    """The batched policy: each image of a batch gets its own random parameters."""

    flip: bool = False
    translate: int = 0
    cutout: int = 0
    alternating_flip: bool = False  # needs the images' dataset indices (both loaders pass them)
    random_resized_crop: bool = False
    crop_scale: float = CROP_SCALE  # smallest crop area, as a fraction of the image
    random_erasing: float = 0.0  # probability per image

    @property
    def active(self) -> bool:
        return (self.flip or self.translate > 0 or self.cutout > 0 or self.random_resized_crop
                or self.random_erasing > 0)

    def __call__(self, x: torch.Tensor, generator: torch.Generator, index: torch.Tensor | None = None,
                 epoch: int = 0, seed: int = 0) -> torch.Tensor:
        n, _, h, w = x.shape

        def draw(low: int, high: int) -> torch.Tensor:
            return torch.randint(low, high, (n,), generator=generator).to(x.device)

        if self.random_resized_crop:
            top, left, bh, bw = _area_boxes(n, h, w, (self.crop_scale, 1.0), (3 / 4, 4 / 3), generator)
            boxes = torch.stack([left, top, left + bw, top + bh], dim=1).float()
            x = resized_crop(x, boxes.to(x.device))
        if self.flip and self.alternating_flip and index is not None:
            x = flip(x, alternating_flip_mask(index, epoch, seed).to(x.device))
        elif self.flip:
            x = flip(x, draw(0, 2).bool())
        if self.translate:
            pad = min(self.translate, h - 1, w - 1)
            x = translate(x, draw(-pad, pad + 1), draw(-pad, pad + 1), pad)
        if self.cutout:
            x = cutout(x, draw(0, h), draw(0, w), self.cutout)
        if self.random_erasing > 0:
            top, left, bh, bw = _area_boxes(n, h, w, (0.02, 0.33), (0.3, 3.3), generator)
            chosen = (torch.rand(n, generator=generator) < self.random_erasing).long()
            x = erase(x, top.to(x.device), left.to(x.device), (bh * chosen).to(x.device), (bw * chosen).to(x.device))
        return x


def erase(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor,
          value: float = 0.0) -> torch.Tensor:
    """Fill a rectangle per image (height/width 0: untouched) with ``value`` (0 = the mean once normalised)."""
    n, _, h, w = x.shape
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    t, l_ = top.view(n, 1, 1), left.view(n, 1, 1)
    inside = (ys >= t) & (ys < t + height.view(n, 1, 1)) & (xs >= l_) & (xs < l_ + width.view(n, 1, 1))
    return x.masked_fill(inside.unsqueeze(1), value)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """The batch at ``size`` x ``size`` (progressive resizing: antialiased bilinear, as a lower-resolution
    photo would be), in the memory format it came in."""
    if x.shape[-2:] == (size, size):
        return x
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    out = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def resized_crop(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Crop ``boxes`` (N, 4: x0, y0, x1, y1 in pixels) out of each image and resize to the input size
    (bilinear, batched through torchvision's roi_align)."""
    from torchvision.ops import roi_align

    n, _, h, w = x.shape
    rois = torch.cat([torch.arange(n, device=x.device, dtype=x.dtype).view(n, 1), boxes.to(x.dtype)], dim=1)
    return roi_align(x, rois, output_size=(h, w), spatial_scale=1.0, sampling_ratio=2, aligned=True)


def _area_boxes(n: int, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float],
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, left, height, width) of random rectangles of ``scale`` x the area and aspect ``ratio``."""
    area = torch.empty(n).uniform_(*scale, generator=generator) * h * w
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_r.exp()
    bh = (area / aspect).sqrt().round().clamp(1, h).long()
    bw = (area * aspect).sqrt().round().clamp(1, w).long()
    top = (torch.rand(n, generator=generator) * (h - bh + 1)).long()
    left = (torch.rand(n, generator=generator) * (w - bw + 1)).long()
    return top, left, bh, bw
