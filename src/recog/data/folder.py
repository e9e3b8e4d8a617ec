"""Image folders: ``PATH/train/<class>/*`` with ``PATH/val`` and/or ``PATH/test``, or ``PATH/<class>/*``.

Class indices follow sorted folder names. Hidden files and folders (a leading dot) are never
classes or images; files without an image extension are ignored. Files that cannot be decoded are
skipped with a warning and listed, never fatal. recog only reads the folder; it never writes there.
"""

from __future__ import annotations

import collections
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from recog.data.datasets import Dataset, Split
from recog.data.image import GREY_MODES, ImageReadError, is_image_file, load_image, peek
from recog.errors import DataError

SPLITS = ("train", "val", "test")
_PEEK_SAMPLE = 512  # headers read to choose the default size and channels


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    """Image files below ``class_dir`` (nested folders included), skipping hidden ones and link loops."""
    files: list[Path] = []
    seen: set[str] = set()
    for root, dirs, names in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            print(f"warning: symlink loop at {root}; not scanned again", file=sys.stderr)
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(Path(root) / n for n in sorted(names) if is_image_file(Path(n)))
    return files


def scan_folder(path: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """Classes and, per split present, the (file, class index) pairs."""
    if not path.is_dir():
        raise DataError(f"image folder not found: {path}")
    split_dirs = {s: path / s for s in SPLITS if (path / s).is_dir()}
    if split_dirs and "train" not in split_dirs:
        raise DataError(f"{path} has {', '.join(split_dirs)}/ but no train/ folder")
    roots = split_dirs or {"train": path}
    classes = [d.name for d in _visible_dirs(roots["train"])]
    if not classes:
        raise DataError(f"{roots['train']} holds no class folders (expected {roots['train']}/<class>/<images>)")
    index = {c: i for i, c in enumerate(classes)}
    files: dict[str, list[tuple[Path, int]]] = {}
    for split, root in roots.items():
        pairs: list[tuple[Path, int]] = []
        for class_dir in _visible_dirs(root):
            if class_dir.name not in index:
                raise DataError(f"{class_dir}: class {class_dir.name!r} is not among the train classes")
            found = _image_files(class_dir)
            if split == "train" and not found:
                raise DataError(f"class folder {class_dir} holds no images")
            pairs.extend((f, index[class_dir.name]) for f in found)
        files[split] = pairs
    return classes, files


def _default_shape(paths: list[Path], image_size: int | None, channels: int | None) -> tuple[int, int, list[str]]:
    """Size (most common shorter side) and channels (1 if every sampled image is greyscale)."""
    notes: list[str] = []
    step = max(1, len(paths) // _PEEK_SAMPLE)
    headers = [h for h in (peek(p) for p in paths[::step]) if h is not None]
    if channels is None:
        channels = 1 if headers and all(mode in GREY_MODES for _, mode in headers) else 3
    if image_size is None:
        sizes = collections.Counter(min(size) for size, _ in headers)
        image_size = sizes.most_common(1)[0][0] if sizes else 32
        if len(sizes) > 1:
            notes.append(f"images have {len(sizes)} different sizes; all are resized to {image_size} (--image-size)")
    return image_size, channels, notes


def _decode_all(
    pairs: list[tuple[Path, int]], channels: int, size: int, skipped: list[tuple[str, str]]
) -> Split:
    images = np.empty((len(pairs), channels, size, size), dtype=np.uint8)
    ok = np.zeros(len(pairs), dtype=bool)

    def work(i: int) -> None:
        path = pairs[i][0]
        try:
            images[i] = load_image(path, channels, size)
            ok[i] = True
        except ImageReadError as exc:
            skipped.append((str(path), str(exc)))
            print(f"warning: skipped {path}: {exc}", file=sys.stderr)

    # Pillow releases the GIL while decoding, so threads use both cores without copying arrays around
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        list(pool.map(work, range(len(pairs)), chunksize=64))
    labels = np.array([c for _, c in pairs], dtype=np.int64)
    return Split(torch.from_numpy(images[ok]), torch.from_numpy(labels[ok]))


def load_folder(path: Path, image_size: int | None = None, channels: int | None = None) -> Dataset:
    classes, files = scan_folder(path)
    all_paths = [p for pairs in files.values() for p, _ in pairs]
    size, channels, notes = _default_shape(all_paths, image_size, channels)
    skipped: list[tuple[str, str]] = []
    splits = {name: _decode_all(pairs, channels, size, skipped) for name, pairs in files.items()}
    if len(splits["train"]) == 0:
        raise DataError(f"no readable training images in {path}")
    ds = Dataset(path.name or str(path), classes, splits["train"], splits.get("val"), splits.get("test"), skipped, notes)
    if skipped:
        ds.notes.append(f"{len(skipped)} files skipped (listed in skipped.csv)")
    return ds
