"""The in-memory loader: the whole split lives on the device as uint8; a batch is an index.

It's faster to keep and slice uint8 data than floats (4x less memory traffic), and a batch needs
no per-image Python work: one ``randperm`` per epoch, then gather, augment and normalise in a few
tensor ops. Shuffling and augmentation draw from a generator seeded by (seed, epoch), so a
resumed run replays exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from recog.data.augment import BatchAugment
from recog.data.splits import Split


def batches_per_epoch(size: int, batch_size: int, drop_last: bool = True) -> int:
    """Batches of an epoch over ``size`` images; a training loader drops a ragged last batch (batch-norm
    never sees a tiny one) unless that would leave no batch at all."""
    return size // batch_size if drop_last and size > batch_size else -(-size // batch_size)


def cycle(loader: Any) -> Iterator[Any]:
    """The loader's batches epoch after epoch (its ``set_epoch`` called when it has one): a loader of
    one or two batches still gives as many steps as a scan or a timing needs."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units of a uint8 (N, C, H, W) tensor."""
    x = images.float().div_(255.0).transpose(0, 1).reshape(images.shape[1], -1)
    std = x.std(dim=1).clamp_min(1e-3)
    return x.mean(dim=1).tolist(), std.tolist()


class Normalize(nn.Module):
    """uint8 -> float, ``(x / 255 - mean) / std``, fused as one multiply-add. A module, so that it
    can sit in front of a model (an exported graph then takes uint8 images)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu") -> None:
        super().__init__()
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", -mean_t / std_t)

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, images_u8.float(), self.scale)


class BatchLoader:
    """What both loaders share: epochs seed the shuffling and augmentation; batches leave as
    normalised floats, augmented when training, in the chosen memory format."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        normalize: Normalize,
        shuffle: bool = False,
        augment: BatchAugment | None = None,
        seed: int = 0,
        drop_last: bool = False,
        channels_last: bool = False,
        sample_weights: torch.Tensor | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.size = size
        self.batch_size = batch_size
        self.normalize = normalize
        self.shuffle = shuffle
        self.augment = augment if augment is not None and augment.active else None
        self.seed = seed
        # dropping a ragged last batch keeps batch-norm away from tiny batches, but never empties an epoch
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.sample_weights = sample_weights  # balanced sampling: draw with replacement by these weights
        self.rank, self.world = shard  # under DDP: this process's slice of every batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return batches_per_epoch(self.size, self.batch_size, self.drop_last)

    def generator(self) -> torch.Generator:
        """The epoch's order: the same (seed, epoch) permutation on every rank."""
        return torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)

    def augment_generator(self, order: torch.Generator) -> torch.Generator:
        """The epoch's augmentation draws: the order's generator on one process, one of its own per rank
        under DDP (the ranks' slices differ, so must their crops and flips)."""
        if self.world == 1:
            return order
        return torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) * 1_000_003 + 7_919 * (self.rank + 1))

    def order(self, generator: torch.Generator) -> torch.Tensor:
        """The indices of the epoch in order: shuffled when training (drawn by weight for balanced sampling)."""
        if self.sample_weights is not None:
            return torch.multinomial(self.sample_weights, self.size, replacement=True, generator=generator)
        if self.shuffle:
            return torch.randperm(self.size, generator=generator)
        return torch.arange(self.size)

    def batches(self, order: torch.Tensor) -> Iterator[torch.Tensor]:
        """The rows of each step: the global batch of ``batch_size`` on one process; under DDP this rank's
        strided slice of it (DistributedSampler's scheme, aligned to batches), so N processes take the same
        images per step as one and the same number of steps."""
        for i in range(len(self)):
            rows = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield rows if self.world == 1 else rows[self.rank::self.world]

    def finish(self, images_u8: torch.Tensor, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self.normalize(images_u8)
        if self.augment is not None:
            x = self.augment(x, generator, index, self.epoch, self.seed)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


class MemoryLoader(BatchLoader):
    """Yields ``(images, labels)`` on ``device``: float, normalised, augmented when training; and the
    items' text embeddings after them when the split has them (fusion runs)."""

    def __init__(self, split: Split, batch_size: int, normalize: Normalize, device: torch.device | str = "cpu",
                 **options: Any) -> None:
        super().__init__(len(split), batch_size, normalize, **options)
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.text = split.text.to(device) if split.text is not None else None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        generator = self.generator()
        order = self.order(generator).to(self.images.device)
        augment = self.augment_generator(generator)
        for rows in self.batches(order):
            if len(rows):
                batch = self.finish(self.images[rows], rows, augment), self.labels[rows]
                yield batch if self.text is None else (*batch, self.text[rows])
