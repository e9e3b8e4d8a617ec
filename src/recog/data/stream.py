"""The streaming loader: a ``torch.utils.data.DataLoader`` with worker processes.

For data larger than memory (decoded per sample from files, with the same decoding as the
in-memory path) and for per-sample augmentation policies that cannot be batched (RandAugment,
TrivialAugment, colour jitter; random-resized-crop at the file's own resolution). Workers return
uint8 images; normalisation and the batched augmentations (flip, translate, cutout, erasing)
happen in the main process on the training device, with the same code as the in-memory loader.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from recog.config import CROP_SCALE
from recog.data.augment import BatchAugment
from recog.data.splits import FileSplit, Split
from recog.data.image import ImageReadError, load_image, open_image
from recog.data.loader import BatchLoader, MemoryLoader, Normalize
from recog.errors import shown


@dataclass
class SamplePolicy:
    """Per-sample augmentation, run in the loader's workers (torchvision transforms v2)."""

    random_resized_crop: bool = False
    crop_scale: float = CROP_SCALE
    auto_augment: str | None = None  # randaugment | trivialaugment
    color_jitter: float = 0.0  # brightness/contrast/saturation strength

    @property
    def active(self) -> bool:
        return self.random_resized_crop or self.needs_workers

    @property
    def needs_workers(self) -> bool:
        """Policies with no batched form (the random-resized-crop has one on the device)."""
        return self.auto_augment is not None or self.color_jitter > 0

    def build(self, size: int, channels: int):  # noqa: ANN201 - a v2 transform or None
        from torchvision.transforms import v2

        steps: list[Any] = []
        if self.random_resized_crop:
            steps.append(v2.RandomResizedCrop(size, scale=(self.crop_scale, 1.0), antialias=True))
        if self.auto_augment == "randaugment":
            steps.append(v2.RandAugment())
        elif self.auto_augment == "trivialaugment":
            steps.append(v2.TrivialAugmentWide())
        if self.color_jitter > 0:
            j = self.color_jitter
            steps.append(v2.ColorJitter(j, j, j if channels == 3 else 0.0))
        return v2.Compose(steps) if steps else None


class SampleDataset(torch.utils.data.Dataset):
    """One uint8 (C, H, W) image per index, from a file or from an in-memory split.

    An unreadable file gives ``None`` and its reason instead of crashing the epoch."""

    def __init__(self, split: Split | FileSplit, channels: int, size: int, policy: SamplePolicy | None = None) -> None:
        self.split = split
        self.channels = channels
        self.size = size
        self.policy = policy if policy is not None and policy.active else None
        self.transform = self.policy.build(size, channels) if self.policy else None

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, torch.Tensor, str, str, int]:
        label = self.split.labels[i]  # a class index, or a multi-hot row
        if isinstance(self.split, Split):
            image, path = self.split.images[i], ""
        else:
            path = self.split.paths[i]
            try:
                if self.policy is not None and self.policy.random_resized_crop:
                    from torchvision.transforms.v2.functional import pil_to_tensor

                    image = pil_to_tensor(open_image(path, self.channels))  # crop from the full resolution
                else:
                    image = torch.from_numpy(load_image(path, self.channels, self.size))
            except ImageReadError as exc:
                return None, label, path, str(exc), i
        if self.transform is not None:
            image = self.transform(image)
        return image, label, path, "", i


def _collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
    good = [(x, y, i) for x, y, _, _, i in batch if x is not None]
    bad = [(p, why) for x, _, p, why, _ in batch if x is None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), bad
    return (torch.stack([x for x, _, _ in good]), torch.stack([y for _, y, _ in good]),
            torch.tensor([i for _, _, i in good]), bad)


def default_workers() -> int:
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class StreamLoader(BatchLoader):
    """Same interface as :class:`MemoryLoader`; images come from ``workers`` processes."""

    def __init__(self, split: Split | FileSplit, channels: int, image_size: int, batch_size: int,
                 normalize: Normalize, device: torch.device | str = "cpu", policy: SamplePolicy | None = None,
                 workers: int | None = None, **options: Any) -> None:
        super().__init__(len(split), batch_size, normalize, **options)
        self.dataset = SampleDataset(split, channels, image_size, policy)
        self.device = torch.device(device)
        self.workers = default_workers() if workers is None else workers
        self.skipped: list[tuple[str, str]] = []
        self.text = split.text.to(self.device) if split.text is not None else None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        from torch.utils.data import DataLoader

        generator = self.generator()
        batches = [rows.tolist() for rows in self.batches(self.order(generator)) if len(rows)]
        augment = self.augment_generator(generator)  # also seeds the workers' per-sample policies
        loader = DataLoader(
            self.dataset, batch_sampler=batches, num_workers=self.workers, collate_fn=_collate,
            pin_memory=self.device.type == "cuda", generator=augment, prefetch_factor=4 if self.workers else None,
        )
        for images, labels, index, bad in loader:
            for path, why in bad:
                print(f"warning: skipped {shown(path)}: {why}", file=sys.stderr)
            self.skipped.extend(bad)
            if len(labels) == 0:
                continue
            x = self.finish(images.to(self.device, non_blocking=True), index, augment)
            batch = x, labels.to(self.device, non_blocking=True)
            yield batch if self.text is None else (*batch, self.text[index.to(self.device)])


def make_loader(
    split: Split | FileSplit,
    channels: int,
    size: int,
    batch_size: int,
    normalize: Normalize,
    device: torch.device | str = "cpu",
    *,
    train: bool = False,
    augment: BatchAugment | None = None,
    policy: SamplePolicy | None = None,
    seed: int = 0,
    channels_last: bool = False,
    workers: int | None = None,
    sample_weights: torch.Tensor | None = None,
    force_stream: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> MemoryLoader | StreamLoader:
    """The in-memory loader when the split is decoded and every augmentation can be batched;
    the streaming loader for files on disk and per-sample policies (RandAugment, TrivialAugment,
    colour jitter). A random-resized-crop is batched in memory and per sample when streaming.
    ``shard``: (rank, world size) under DDP: each step yields this rank's slice of the global batch."""
    per_sample = train and policy is not None and policy.needs_workers
    options = dict(shuffle=train, augment=augment if train else None, seed=seed, drop_last=train,
                   channels_last=channels_last, sample_weights=sample_weights if train else None,
                   shard=shard)
    if isinstance(split, FileSplit) or per_sample or force_stream:
        if augment is not None and policy is not None and policy.random_resized_crop:
            options["augment"] = dataclasses.replace(augment, random_resized_crop=False)  # per sample instead
        return StreamLoader(split, channels, size, batch_size, normalize, device,
                            policy=policy if train else None, workers=workers, **options)
    return MemoryLoader(split, batch_size, normalize, device, **options)
