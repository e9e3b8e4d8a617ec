"""What every data source ends as: splits of uint8 images (in memory) or files (streamed), and labels.

Labels are int64 class indices (N,) for single-label data, or float32 multi-hot rows (N, L) for
multi-label data (several labels per image). A manifest with a ``text`` column gives each item its
text (``texts``, "" where missing); a fusion run adds their embeddings (``text``, float32 (N, d)),
which the loaders yield after the labels.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,) or float32 multi-hot (N, L)
    paths: list[str] | None = None  # the files the images were decoded from (image folders, manifests)
    texts: list[str] | None = None  # each item's text (manifests with a text column)
    text: torch.Tensor | None = None  # their embeddings (fusion runs)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray | torch.Tensor) -> Split:
        index = torch.as_tensor(index, dtype=torch.long)
        return Split(self.images[index], self.labels[index], *_pick(index, self.paths, self.texts, self.text))


@dataclass
class FileSplit:
    """A split left on disk (larger than memory): decoded per sample by the streaming loader."""

    paths: list[str]
    labels: torch.Tensor  # int64 (N,) or float32 multi-hot (N, L)
    texts: list[str] | None = None
    text: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray | torch.Tensor) -> FileSplit:
        index = torch.as_tensor(index, dtype=torch.long)
        paths, texts, text = _pick(index, self.paths, self.texts, self.text)
        return FileSplit(paths, self.labels[index], texts, text)


def _pick(index: torch.Tensor, paths: list[str] | None, texts: list[str] | None,
          text: torch.Tensor | None) -> tuple[list[str] | None, list[str] | None, torch.Tensor | None]:
    """The rows ``index`` of a split's per-item lists and text embeddings (those it has)."""
    rows = index.tolist()
    return ([paths[i] for i in rows] if paths is not None else None,
            [texts[i] for i in rows] if texts is not None else None,
            text[index] if text is not None else None)


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

    @property
    def has_text(self) -> bool:
        """The items have texts (a manifest with a ``text`` column): fusion models can read them."""
        return self.train.texts is not None

    @property
    def multilabel(self) -> bool:
        """Several labels per image: the labels are multi-hot rows."""
        return self.train.labels.ndim == 2

    def counts(self, split: AnySplit) -> torch.Tensor:
        """Images per class (per label, when multi-label) in ``split`` (int64, one entry per class)."""
        if split.labels.ndim == 2:
            return split.labels.sum(0).round().long()
        return torch.bincount(split.labels, minlength=len(self.classes))

    def class_counts(self) -> dict[str, list[int]]:
        return {name: self.counts(s).tolist()
                for name, s in (("train", self.train), ("val", self.val), ("test", self.test)) if s is not None}

    def class_weights(self) -> torch.Tensor:
        """Loss weights inverse to class frequency in train, mean 1 over the classes present."""
        counts = self.counts(self.train).float()
        present = counts > 0
        weights = torch.ones_like(counts)
        weights[present] = counts[present].sum() / (present.sum() * counts[present])
        return weights

    def pos_weight(self) -> torch.Tensor:
        """Multi-label: each label's positives weighted by its negatives/positives (1 for absent labels)."""
        positives = self.counts(self.train).float()
        negatives = len(self.train) - positives
        return torch.where(positives > 0, negatives / positives.clamp_min(1), torch.ones_like(positives))

    def sample_weights(self) -> torch.Tensor:
        """Per training image, sampling weights that give every class the same share of each epoch."""
        if self.multilabel:
            from recog.errors import ConfigError

            raise ConfigError("balanced_sampling is for single-label data")
        return (1.0 / self.counts(self.train).double())[self.train.labels]

    def imbalance(self) -> tuple[int, int, float] | None:
        """(largest class, smallest class, ratio) of the training split when the ratio is 5 or more.
        Multi-label: (rarest label, rarest label, its negatives per positive) when that is 20 or more —
        a label on every image (animal/vehicle beside the fine classes) is no imbalance; a rare one is."""
        counts = self.counts(self.train).float()
        if self.multilabel:
            rare = int(counts.argmin())
            ratio = float((len(self.train) - counts[rare]) / counts[rare]) if counts[rare] > 0 else float("inf")
            return (rare, rare, ratio) if ratio >= 20 else None
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
        if self.has_text:
            missing = sum(t == "" for s in (self.train, self.val, self.test) if s is not None for t in s.texts or ())
            lines.append(f"  texts: {missing} of {sum(len(s) for s in (self.train, self.val, self.test) if s is not None)}"
                         f" items have none (they get the empty text's embedding)")
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


def random_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) of a seeded random split (multi-label data has no single class to
    stratify by); at least one image is held out when ``fraction`` > 0 and there are two or more."""
    order = np.random.default_rng(seed).permutation(n)
    n_held = int(round(n * fraction))
    if fraction > 0 and n >= 2:
        n_held = min(max(n_held, 1), n - 1)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def hold_out(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """Carve a validation split out of train when the data has none (stratified by class when
    single-label, random when multi-label)."""
    if ds.val is not None or fraction <= 0:
        return ds
    if ds.multilabel:
        keep, held = random_split(len(ds.train), fraction, seed)
    else:
        keep, held = stratified_split(ds.train.labels, fraction, seed)
    ds.train, ds.val = ds.train.subset(keep), ds.train.subset(held)
    return ds


def label_tensor(labels: list, num_labels: int | None = None) -> torch.Tensor:
    """int64 class indices, or (``num_labels`` given: multi-label) float32 multi-hot rows from
    tuples of 0/1."""
    if num_labels is not None:
        return torch.tensor(labels, dtype=torch.float32).reshape(len(labels), num_labels)
    return torch.tensor(labels, dtype=torch.long)


def cache_dir() -> Path:
    """Where torchvision datasets are downloaded: ``$RECOG_CACHE`` or ``~/.cache/recog``."""
    return Path(os.environ.get("RECOG_CACHE", Path.home() / ".cache" / "recog"))


def offline() -> bool:
    return os.environ.get("RECOG_OFFLINE", "") not in ("", "0", "false")


