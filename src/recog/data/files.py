"""From a scan (files and their labels, per split) to a :class:`Dataset`: the default size and
channels, decoding (threads) into a uint8 cache, or files left on disk for the streaming loader.

Shared by image folders and label manifests. Data that fits in memory is decoded once into a
uint8 cache (``$RECOG_CACHE/images/<key>``, keyed by the file list, sizes, modification times,
image size and channels), so the next run starts from it; larger data stays on disk as a
:class:`FileSplit`. Files that cannot be decoded are skipped with a warning, counted and listed.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recog.config import LOADERS
from recog.data.image import DEFAULT_MAX_PIXELS, GREY_MODES, ImageReadError, decode, peek, set_max_image_pixels
from recog.data.splits import Dataset, FileSplit, Split, cache_dir, label_tensor
from recog.errors import DataError, shown

SPLITS = ("train", "val", "test")
_PEEK_SAMPLE = 512  # headers read to choose the default size and channels
# bumped when decoding changes, so old caches are not reused
_CACHE_VERSION = "3"  # 3: JPEGs decoded at a reduced DCT scale; 2: multi-hot labels, paths kept

Label = int | tuple[int, ...]  # a class index, or a multi-hot row


_quiet = contextvars.ContextVar("quiet", default=False)


def warn(message: str) -> None:
    if not _quiet.get():
        print(f"warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Scan warnings unsaid within the block: the planner's look at the headers precedes the real
    scan, which says them (once, not twice)."""
    token = _quiet.set(True)
    try:
        yield
    finally:
        _quiet.reset(token)


@dataclass
class Scan:
    """What a source found: classes and, per split present, the (file, label) pairs."""

    root: Path  # the folder, or the manifest file
    classes: list[str]
    files: dict[str, list[tuple[str, Label]]]  # split -> (path, label)
    multilabel: bool = False
    empty: list[str] = field(default_factory=list)  # class folders with no image files
    skipped: list[tuple[str, str]] = field(default_factory=list)  # found missing while scanning
    train_root: Path | None = None  # where class folders live (messages about empty classes)
    texts: dict[str, list[str]] | None = None  # split -> each pair's text (manifests with a text column)

    @property
    def num_labels(self) -> int | None:
        return len(self.classes) if self.multilabel else None


def check_empty(folders: list[str], allowed: bool, why: str) -> None:
    if not folders:
        return
    message = f"class folder {folders[0]} {why}" + (f" (and {len(folders) - 1} more)" if len(folders) > 1 else "")
    if not allowed:
        raise DataError(f"{message}; add images, remove the folder, or pass --allow-empty-classes")
    warn(message + "; kept as a class with no training images (--allow-empty-classes)")


def default_shape(scan: Scan, image_size: int | None, channels: int | None) -> tuple[int, int, list[str]]:
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
    pairs: list[tuple[str, Label]], channels: int, size: int, skipped: list[tuple[str, str]],
    sizes: collections.Counter | None = None, num_labels: int | None = None,
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
            warn(f"skipped {shown(path)}: {exc}")

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        list(pool.map(work, range(len(pairs)), chunksize=64))
    ok = np.array([o is not None for o in original], dtype=bool)
    if sizes is not None:
        sizes.update(f"{o[0]}x{o[1]}" for o in original if o is not None)
    labels = label_tensor([c for _, c in pairs], num_labels)
    paths = [p for (p, _), good in zip(pairs, ok) if good]
    return Split(torch.from_numpy(images[ok]), labels[torch.from_numpy(ok)], paths)


def cache_key(scan: Scan, size: int, channels: int, max_pixels: int | None) -> str:
    """Changes whenever a file is added, removed, replaced or touched, or the decoding changes."""
    max_pixels = max_pixels or DEFAULT_MAX_PIXELS  # unset is Pillow's default: the same cache
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
    """The decoded splits. Under torchrun (several processes) the images are mapped read-only, so the
    processes of a machine share one copy in the page cache instead of holding one each."""
    shared = int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        meta = json.loads((folder / "meta.json").read_text())
        splits = {
            name: Split(_tensor(np.load(folder / f"{name}.images.npy", allow_pickle=False,
                                        mmap_mode="r" if shared else None)),
                        torch.from_numpy(np.load(folder / f"{name}.labels.npy", allow_pickle=False)),
                        meta.get("paths", {}).get(name))
            for name in meta["splits"]
        }
    except (OSError, ValueError, KeyError) as exc:
        if (folder / "meta.json").exists():
            warn(f"unreadable image cache {folder} ({exc}): decoding again and replacing it")
        return None
    return splits, [tuple(s) for s in meta["skipped"]], meta.get("sizes", {})


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over the array (a read-only map stays one: nothing writes into decoded images)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _write_cache(folder: Path, splits: dict[str, Split], skipped: list[tuple[str, str]], sizes: dict[str, int]) -> None:
    """Write into a temporary folder, then rename it into place: a kill leaves no half cache."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        for name, split in splits.items():
            np.save(tmp / f"{name}.images.npy", split.images.numpy())
            np.save(tmp / f"{name}.labels.npy", split.labels.numpy())
        (tmp / "meta.json").write_text(json.dumps({"splits": list(splits), "skipped": sorted(skipped),
                                                   "paths": {name: split.paths for name, split in splits.items()},
                                                   "sizes": sizes}))
        try:
            os.replace(tmp, folder)
        except OSError:  # another run wrote it first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        warn(f"could not write the image cache {folder} ({exc}); the next run decodes again")


def _with_texts(split: Split, pairs: list[tuple[str, Label]], texts: list[str]) -> Split:
    """The split with its items' texts: the decoded images are the scan's pairs in order, less the
    files that could not be read (a file named twice decodes the same both times, so the walk is exact)."""
    kept, paths, j = [], split.paths or [], 0
    for (path, _), text in zip(pairs, texts):
        if j < len(paths) and paths[j] == path:
            kept.append(text)
            j += 1
    if len(kept) != len(split):
        raise DataError(f"the decoded images and the manifest's rows do not line up ({len(kept)} texts for "
                        f"{len(split)} images); delete the image cache {cache_dir() / 'images'} and run again")
    return dataclasses.replace(split, texts=kept)


def total_memory() -> int:
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
    budget = memory_fraction * total_memory()
    if str(device).startswith("cuda") and torch.cuda.is_available():
        budget = min(budget, memory_fraction * torch.cuda.get_device_properties(0).total_memory)
    return "memory" if decoded_bytes <= budget else "stream"


def load_scan(
    scan: Scan,
    image_size: int | None = None,
    channels: int | None = None,
    loader: str = "auto",
    memory_fraction: float = 0.25,
    max_image_pixels: int | None = None,
    allow_empty_classes: bool = False,
    cache: bool = True,
    device: str = "cpu",
) -> Dataset:
    """Decode a scan into memory (through the cache) or leave its files on disk for streaming."""
    set_max_image_pixels(max_image_pixels)
    size, channels, notes = default_shape(scan, image_size, channels)
    n_files = sum(len(p) for p in scan.files.values())
    mode = choose_loader(loader, n_files * channels * size * size, memory_fraction, device)
    name = scan.root.name or str(scan.root)
    if mode == "stream":
        splits_f = {s: FileSplit([p for p, _ in pairs], label_tensor([c for _, c in pairs], scan.num_labels),
                                 scan.texts[s] if scan.texts is not None else None)
                    for s, pairs in scan.files.items()}
        notes.append(f"{n_files} images stream from disk through worker processes (--loader stream"
                     f"{'' if loader == 'stream' else ': too large for --memory-fraction of RAM'})")
        return Dataset(name, scan.classes, channels, size, splits_f["train"], splits_f.get("val"),
                       splits_f.get("test"), skipped=sorted(scan.skipped), notes=notes)

    key = cache_key(scan, size, channels, max_image_pixels)
    folder = cache_dir() / "images" / key
    cached = _read_cache(folder) if cache else None
    if cached is not None:
        splits, skipped, sizes = cached
        notes.append(f"decoded images loaded from the cache {folder}")
    else:
        skipped = list(scan.skipped)
        counter: collections.Counter = collections.Counter()
        splits = {s: decode_files(pairs, channels, size, skipped, counter, scan.num_labels)
                  for s, pairs in scan.files.items()}
        sizes = dict(counter)
        if cache:
            if folder.exists():  # there but unreadable (warned above): replaced, not decoded again every run
                shutil.rmtree(folder, ignore_errors=True)
            _write_cache(folder, splits, skipped, sizes)
    if len(splits["train"]) == 0:
        raise DataError(f"no readable training images in {scan.root}")
    if scan.texts is not None:
        splits = {s: _with_texts(split, scan.files[s], scan.texts[s]) for s, split in splits.items()}
    if scan.train_root is not None:
        train_root = scan.train_root
        counts = torch.bincount(splits["train"].labels, minlength=len(scan.classes)).tolist()
        now_empty = [str(train_root / c) for c, n in zip(scan.classes, counts)
                     if n == 0 and str(train_root / c) not in scan.empty]  # emptied by skipped files
        check_empty(now_empty, allow_empty_classes, "has no readable images left after skipping bad files")
    ds = Dataset(name, scan.classes, channels, size, splits["train"], splits.get("val"), splits.get("test"),
                 sorted(skipped), notes, sizes)
    if skipped:
        ds.notes.append(f"{len(skipped)} files skipped (listed in the run folder's skipped.csv)")
    return ds
