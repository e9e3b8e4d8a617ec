"""Image folders: ``PATH/train/<class>/*`` with ``PATH/val`` and/or ``PATH/test``, or ``PATH/<class>/*``.

The folder is scanned once: class indices follow sorted folder names; hidden files and folders
(a leading dot) are never classes or images; files without an image extension are ignored; a
symlink loop ends that branch with a warning. Files that cannot be decoded are skipped with a
warning, counted and listed, never fatal.

Data that fits in memory is decoded once into a uint8 cache (``$RECOG_CACHE/images/<key>``,
keyed by the file list, sizes, modification times, image size and channels), so the next run
starts from it; larger data stays on disk as a :class:`FileSplit` for the streaming loader.
recog only reads the folder: nothing is ever written there.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recog.data.datasets import Dataset, FileSplit, Split, cache_dir
from recog.data.image import GREY_MODES, ImageReadError, decode, is_image_file, peek, set_max_image_pixels
from recog.config import LOADERS
from recog.errors import DataError

SPLITS = ("train", "val", "test")
_PEEK_SAMPLE = 512  # headers read to choose the default size and channels
_CACHE_VERSION = "1"  # bump when decoding changes, so old caches are not reused


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


@dataclass
class FolderScan:
    root: Path
    classes: list[str]
    files: dict[str, list[tuple[str, int]]]  # split -> (path, class index)
    empty: list[str] = field(default_factory=list)  # class folders with no image files


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> list[str]:
    """Image files below ``class_dir`` (nested folders too), skipping hidden ones and link loops."""
    files: list[str] = []
    seen: set[str] = set()
    for root, dirs, names in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            _warn(f"symlink loop at {root}; that branch is not scanned again")
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(os.path.join(root, n) for n in sorted(names) if is_image_file(Path(n)))
    return files


def scan_folder(path: Path, allow_empty_classes: bool = False) -> FolderScan:
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
    files: dict[str, list[tuple[str, int]]] = {}
    empty: list[str] = []
    for split, root in roots.items():
        pairs: list[tuple[str, int]] = []
        for class_dir in _visible_dirs(root):
            if class_dir.name not in index:
                raise DataError(f"{class_dir}: class {class_dir.name!r} is not among the train classes")
            found = _image_files(class_dir)
            if split == "train" and not found:
                empty.append(str(class_dir))
            pairs.extend((f, index[class_dir.name]) for f in found)
        files[split] = pairs
    _check_empty(empty, allow_empty_classes, "holds no images")
    return FolderScan(path, classes, files, empty)


def _check_empty(folders: list[str], allowed: bool, why: str) -> None:
    if not folders:
        return
    message = f"class folder {folders[0]} {why}" + (f" (and {len(folders) - 1} more)" if len(folders) > 1 else "")
    if not allowed:
        raise DataError(f"{message}; add images, remove the folder, or pass --allow-empty-classes")
    _warn(message + "; kept as a class with no training images (--allow-empty-classes)")


def default_shape(scan: FolderScan, image_size: int | None, channels: int | None) -> tuple[int, int, list[str]]:
    """Size (most common shorter side) and channels (1 if every sampled image is greyscale)."""
    notes: list[str] = []
    paths = [p for pairs in scan.files.values() for p, _ in pairs]
    step = max(1, len(paths) // _PEEK_SAMPLE)
    headers = [h for h in (peek(Path(p)) for p in paths[::step]) if h is not None]
    if channels is None:
        channels = 1 if headers and all(mode in GREY_MODES for _, mode in headers) else 3
    if image_size is None:
        sizes = collections.Counter(min(size) for size, _ in headers)
        image_size = sizes.most_common(1)[0][0] if sizes else 32
        if len(sizes) > 1:
            notes.append(f"images have {len(sizes)} different sizes; all are resized to {image_size}px "
                         f"(shorter side, centre crop; choose with --image-size)")
    return image_size, channels, notes


# ---- decoding and the cache --------------------------------------------------------------------


def decode_files(
    pairs: list[tuple[str, int]], channels: int, size: int, skipped: list[tuple[str, str]],
    sizes: collections.Counter | None = None,
) -> Split:
    """Decode every file (threads: Pillow releases the GIL while decoding); bad files are skipped."""
    images = np.empty((len(pairs), channels, size, size), dtype=np.uint8)
    original: list[tuple[int, int] | None] = [None] * len(pairs)

    def work(i: int) -> None:
        path = pairs[i][0]
        try:
            images[i], original[i] = decode(path, channels, size)
        except ImageReadError as exc:
            skipped.append((path, str(exc)))
            _warn(f"skipped {path}: {exc}")

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        list(pool.map(work, range(len(pairs)), chunksize=64))
    ok = np.array([o is not None for o in original], dtype=bool)
    if sizes is not None:
        sizes.update(f"{o[0]}x{o[1]}" for o in original if o is not None)
    labels = np.array([c for _, c in pairs], dtype=np.int64)
    return Split(torch.from_numpy(images[ok]), torch.from_numpy(labels[ok]))


def cache_key(scan: FolderScan, size: int, channels: int, max_pixels: int | None) -> str:
    """Changes whenever a file is added, removed, replaced or touched, or the decoding changes."""
    h = hashlib.sha256(f"{_CACHE_VERSION}|{scan.root.resolve()}|{size}|{channels}|{max_pixels}".encode())
    for split, pairs in scan.files.items():
        h.update(split.encode())
        for path, label in pairs:
            try:
                st = os.stat(path)
                h.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{path}|{label}|missing\n".encode())
    return h.hexdigest()[:32]


def _read_cache(folder: Path) -> tuple[dict[str, Split], list[tuple[str, str]], dict[str, int]] | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        splits = {
            name: Split(torch.from_numpy(np.load(folder / f"{name}.images.npy", allow_pickle=False)),
                        torch.from_numpy(np.load(folder / f"{name}.labels.npy", allow_pickle=False)))
            for name in meta["splits"]
        }
    except (OSError, ValueError, KeyError) as exc:
        if (folder / "meta.json").exists():
            _warn(f"ignoring unreadable cache {folder} ({exc})")
        return None
    return splits, [tuple(s) for s in meta["skipped"]], meta.get("sizes", {})


def _write_cache(folder: Path, splits: dict[str, Split], skipped: list[tuple[str, str]], sizes: dict[str, int]) -> None:
    """Write into a temporary folder, then rename it into place: a kill leaves no half cache."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        for name, split in splits.items():
            np.save(tmp / f"{name}.images.npy", split.images.numpy())
            np.save(tmp / f"{name}.labels.npy", split.labels.numpy())
        (tmp / "meta.json").write_text(json.dumps({"splits": list(splits), "skipped": sorted(skipped),
                                                   "sizes": sizes}))
        try:
            os.replace(tmp, folder)
        except OSError:  # another run wrote it first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        _warn(f"could not write the image cache {folder} ({exc}); the next run decodes again")


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def choose_loader(loader: str, decoded_bytes: int, memory_fraction: float, device: str = "cpu") -> str:
    """``memory`` when the decoded uint8 data fits in the given fraction of RAM (and GPU memory)."""
    if loader not in LOADERS:
        raise DataError(f"loader must be one of {', '.join(LOADERS)}; got {loader!r}")
    if loader != "auto":
        return loader
    budget = memory_fraction * _total_memory()
    if str(device).startswith("cuda") and torch.cuda.is_available():
        budget = min(budget, memory_fraction * torch.cuda.get_device_properties(0).total_memory)
    return "memory" if decoded_bytes <= budget else "stream"


def load_folder(
    path: Path,
    image_size: int | None = None,
    channels: int | None = None,
    loader: str = "auto",
    memory_fraction: float = 0.25,
    max_image_pixels: int | None = None,
    allow_empty_classes: bool = False,
    cache: bool = True,
    device: str = "cpu",
) -> Dataset:
    set_max_image_pixels(max_image_pixels)
    scan = scan_folder(path, allow_empty_classes)
    size, channels, notes = default_shape(scan, image_size, channels)
    n_files = sum(len(p) for p in scan.files.values())
    mode = choose_loader(loader, n_files * channels * size * size, memory_fraction, device)
    name = path.name or str(path)
    if mode == "stream":
        splits_f = {s: FileSplit([p for p, _ in pairs], torch.tensor([c for _, c in pairs], dtype=torch.long))
                    for s, pairs in scan.files.items()}
        notes.append(f"{n_files} images stream from disk through worker processes (--loader stream"
                     f"{'' if loader == 'stream' else ': too large for --memory-fraction of RAM'})")
        return Dataset(name, scan.classes, channels, size, splits_f["train"], splits_f.get("val"),
                       splits_f.get("test"), notes=notes)

    key = cache_key(scan, size, channels, max_image_pixels)
    folder = cache_dir() / "images" / key
    cached = _read_cache(folder) if cache else None
    if cached is not None:
        splits, skipped, sizes = cached
        notes.append(f"decoded images loaded from the cache {folder}")
    else:
        skipped: list[tuple[str, str]] = []
        counter: collections.Counter = collections.Counter()
        splits = {s: decode_files(pairs, channels, size, skipped, counter) for s, pairs in scan.files.items()}
        sizes = dict(counter)
        if cache:
            _write_cache(folder, splits, skipped, sizes)
    if len(splits["train"]) == 0:
        raise DataError(f"no readable training images in {path}")
    counts = torch.bincount(splits["train"].labels, minlength=len(scan.classes)).tolist()
    train_root = path / "train" if (path / "train").is_dir() else path
    now_empty = [str(train_root / c) for c, n in zip(scan.classes, counts)
                 if n == 0 and str(train_root / c) not in scan.empty]  # emptied by skipped files
    _check_empty(now_empty, allow_empty_classes, "has no readable images left after skipping bad files")
    ds = Dataset(name, scan.classes, channels, size, splits["train"], splits.get("val"), splits.get("test"),
                 sorted(skipped), notes, sizes)
    if skipped:
        ds.notes.append(f"{len(skipped)} files skipped (listed in the run folder's skipped.csv)")
    return ds
