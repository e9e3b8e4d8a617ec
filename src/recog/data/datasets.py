"""Dataset sources, all ending as uint8 tensors in memory: (N, C, H, W) images and int64 labels.

- ``digits``: scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, offline).
- ``cifar10``, ``cifar100``, ``mnist``, ``fashion-mnist``: through torchvision, from ``data_root``
  or a cache folder (downloaded there when online, unless ``RECOG_OFFLINE=1``).
- a PATH: an image folder (see :mod:`recog.data.folder`).
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recog.errors import DataError

BUILTIN = ("digits", "cifar10", "cifar100", "mnist", "fashion-mnist")
# (channels, side, classes) of the built-in datasets, known without loading them
BUILTIN_SHAPES = {
    "digits": (1, 8, 10),
    "cifar10": (3, 32, 10),
    "cifar100": (3, 32, 100),
    "mnist": (1, 28, 10),
    "fashion-mnist": (1, 28, 10),
}


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray | torch.Tensor) -> Split:
        index = torch.as_tensor(index, dtype=torch.long)
        return Split(self.images[index], self.labels[index])


@dataclass
class FileSplit:
    """A split left on disk (larger than memory): decoded per sample by the streaming loader."""

    paths: list[str]
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray | torch.Tensor) -> FileSplit:
        index = torch.as_tensor(index, dtype=torch.long)
        return FileSplit([self.paths[i] for i in index.tolist()], self.labels[index])


AnySplit = Split | FileSplit


@dataclass
class Dataset:
    name: str
    classes: list[str]
    channels: int
    image_size: int
    train: AnySplit
    val: AnySplit | None = None
    test: AnySplit | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    notes: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)  # original "WxH" -> count (image folders)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, Split)

    def counts(self, split: AnySplit) -> torch.Tensor:
        """Images per class in ``split`` (int64, one entry per class)."""
        return torch.bincount(split.labels, minlength=len(self.classes))

    def class_counts(self) -> dict[str, list[int]]:
        return {name: self.counts(s).tolist()
                for name, s in (("train", self.train), ("val", self.val), ("test", self.test)) if s is not None}

    def imbalance(self) -> tuple[int, int, float] | None:
        """(largest class, smallest class, ratio) of the training split when the ratio is 5 or more."""
        counts = self.counts(self.train).float()
        big, small = int(counts.argmax()), int(counts.argmin())
        ratio = float(counts[big] / counts[small]) if counts[small] > 0 else float("inf")
        return (big, small, ratio) if ratio >= 5 else None

    @property
    def eval_split(self) -> tuple[str, AnySplit] | None:
        """The split the final report is made on: test if there is one, else val, else None."""
        if self.test is not None and len(self.test):
            return "test", self.test
        if self.val is not None and len(self.val):
            return "val", self.val
        return None

    def summary(self, max_rows: int = 30) -> str:
        """Classes, images per class and split, sizes seen, skipped files, imbalance."""
        parts = [f"{name} {len(s)}" for name, s in (("train", self.train), ("val", self.val), ("test", self.test))
                 if s is not None]
        lines = [f"{self.name}: {len(self.classes)} classes, {self.channels}x{self.image_size}x{self.image_size} "
                 f"({'in memory' if self.in_memory else 'streamed from disk'}), " + ", ".join(parts)]
        if self.sizes:
            seen = sorted(self.sizes.items(), key=lambda kv: -kv[1])
            more = f" and {len(seen) - 5} more" if len(seen) > 5 else ""
            lines.append("  sizes seen: " + ", ".join(f"{k} x{v}" for k, v in seen[:5]) + more)
        counts = self.class_counts()
        width = max(8, *(len(c) for c in self.classes[:max_rows]))
        lines.append("  " + "class".ljust(width) + "".join(f"{name:>8}" for name in counts))
        for i, c in enumerate(self.classes[:max_rows]):
            lines.append("  " + c.ljust(width) + "".join(f"{counts[name][i]:>8}" for name in counts))
        if len(self.classes) > max_rows:
            lines.append(f"  … {len(self.classes) - max_rows} more classes")
        if self.skipped:
            reasons = collections.Counter(r.split(" (")[0].split(":")[0] for _, r in self.skipped)
            lines.append(f"  skipped {len(self.skipped)} files: " + ", ".join(f"{n} {r}" for r, n in reasons.items()))
        return "\n".join(lines)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): ``fraction`` of each class held out, at least one per class of 2+."""
    rng = np.random.default_rng(seed)
    labels_np = labels.numpy()
    keep, held = [], []
    for c in np.unique(labels_np):
        idx = np.flatnonzero(labels_np == c)
        rng.shuffle(idx)
        n_held = int(round(len(idx) * fraction))
        if fraction > 0 and len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def cache_dir() -> Path:
    """Where torchvision datasets are downloaded: ``$RECOG_CACHE`` or ``~/.cache/recog``."""
    return Path(os.environ.get("RECOG_CACHE", Path.home() / ".cache" / "recog"))


def offline() -> bool:
    return os.environ.get("RECOG_OFFLINE", "") not in ("", "0", "false")


def load_dataset(
    data: str,
    data_root: str | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    image_size: int | None = None,
    channels: int | None = None,
    **folder_options: Any,
) -> Dataset:
    """Load a built-in dataset by name or an image folder by path, with a val split carved when needed.

    ``folder_options`` go to :func:`recog.data.folder.load_folder` (loader, memory_fraction,
    max_image_pixels, allow_empty_classes, cache, device)."""
    if data == "digits":
        ds = _digits()
    elif data in BUILTIN:
        ds = _torchvision(data, data_root)
    elif Path(data).expanduser().is_dir():
        from recog.data.folder import load_folder

        ds = load_folder(Path(data).expanduser(), image_size=image_size, channels=channels, **folder_options)
    else:
        import difflib

        close = difflib.get_close_matches(data, BUILTIN, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(
            f"--data {data!r} is neither a dataset name ({', '.join(BUILTIN)}) nor an existing folder.{hint}"
        )
    if ds.val is None and val_fraction > 0:
        keep, held = stratified_split(ds.train.labels, val_fraction, split_seed)
        ds.train, ds.val = ds.train.subset(keep), ds.train.subset(held)
    return ds


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 grey levels -> 0..255
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    full = Split(images, labels)
    # digits has no official test split: hold out a fixed, stratified 20% (seed 0, never changes)
    keep, held = stratified_split(labels, 0.2, seed=0)
    return Dataset("digits", [str(i) for i in range(10)], 1, 8, full.subset(keep), test=full.subset(held))


_TV_CLASSES = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def _torchvision(name: str, data_root: str | None) -> Dataset:
    import torchvision

    cls = getattr(torchvision.datasets, _TV_CLASSES[name])
    root = Path(data_root).expanduser() if data_root else cache_dir() / "datasets"
    download = data_root is None and not offline()

    def get(train: bool):  # noqa: ANN202
        try:
            return cls(str(root), train=train, download=False)
        except RuntimeError:
            pass  # not there (torchvision checks the files' checksums before reading them)
        if not download:
            where = f"--data-root {root}" if data_root else f"the cache {root} (RECOG_OFFLINE is set)"
            raise DataError(
                f"{name} was not found in {where}. Give --data-root a folder holding torchvision's copy "
                f"of {name}, run once online without --data-root to download it into {cache_dir() / 'datasets'}, "
                f"or use data that needs no download: --data digits, or --data PATH to an image folder."
            ) from None
        try:
            return cls(str(root), train=train, download=True)
        except Exception as exc:  # noqa: BLE001 - any network failure means the same to the user
            raise DataError(
                f"could not download {name} into {root} ({type(exc).__name__}: {exc}). "
                f"Copy it there or pass --data-root DIR; offline choices: --data digits, or --data PATH "
                f"to an image folder."
            ) from None

    splits = []
    for train in (True, False):
        tv = get(train)
        data = tv.data if isinstance(tv.data, torch.Tensor) else torch.from_numpy(np.asarray(tv.data))
        images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)  # NHW / NHWC -> NCHW
        labels = torch.as_tensor(np.asarray(tv.targets), dtype=torch.long)
        splits.append(Split(images.contiguous(), labels))
        classes = list(tv.classes)
    images = splits[0].images
    return Dataset(name, classes, int(images.shape[1]), int(images.shape[-1]), splits[0], test=splits[1])
