"""The built-in datasets: scikit-learn's bundled digits (offline) and torchvision's sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recog.data.splits import Dataset, Split, cache_dir, offline, stratified_split
from recog.errors import DataError

TORCHVISION = ("cifar10", "cifar100", "mnist", "fashion-mnist")
BUILTIN = ("digits", *TORCHVISION)
# (channels, side, classes) of the built-in datasets, known without loading them
BUILTIN_SHAPES = {
    "digits": (1, 8, 10),
    "cifar10": (3, 32, 10),
    "cifar100": (3, 32, 100),
    "mnist": (1, 28, 10),
    "fashion-mnist": (1, 28, 10),
}
# (train, test) images of the built-in datasets (digits: its fixed 80/20 split)
BUILTIN_COUNTS = {
    "digits": (1437, 360),
    "cifar10": (50000, 10000),
    "cifar100": (50000, 10000),
    "mnist": (60000, 10000),
    "fashion-mnist": (60000, 10000),
}


def digits() -> Dataset:
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


def torchvision_set(name: str, data_root: str | None) -> Dataset:
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
            local = f" To train on your folder named {name!r}, say --data ./{name}." if Path(name).is_dir() else ""
            raise DataError(
                f"{name} was not found in {where}.{local} Give --data-root a folder holding torchvision's copy "
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
