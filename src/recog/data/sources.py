"""Data sources registered by name, like the models: ``--data`` is a source's name or a path.

Built in: ``digits`` (bundled, offline), the torchvision sets (``cifar10``, ``cifar100``,
``mnist``, ``fashion-mnist``) and, for a path, a label manifest (CSV/JSONL, or a folder of
``train.csv``…) or an image folder. :func:`register_source` adds a named source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recog.data.builtin import BUILTIN_COUNTS, BUILTIN_SHAPES, TORCHVISION, digits, torchvision_set
from recog.data.splits import Dataset, hold_out

if TYPE_CHECKING:
    from recog.data.files import Scan
from recog.errors import DataError, did_you_mean

# a named source: (data_root, **options) -> Dataset; options are those of the path sources
Source = Callable[..., Dataset]
_SOURCES: dict[str, Source] = {}


def register_source(name: str, source: Source) -> None:
    """Make ``--data NAME`` load ``source(data_root, **options)``; a duplicate name raises."""
    if name in _SOURCES:
        raise ValueError(f"data source {name!r} is already registered")
    _SOURCES[name] = source


def list_sources() -> list[str]:
    return sorted(_SOURCES)


register_source("digits", lambda data_root=None, **_: digits())
for _name in TORCHVISION:
    register_source(_name, lambda data_root=None, _name=_name, **_: torchvision_set(_name, data_root))


@dataclass(frozen=True)
class Probe:
    """What the planner needs to know about data before it is decoded (file headers, counts)."""

    side: int  # the images' most common shorter side (their native size)
    channels: int
    train: int  # training images (after the validation split is carved)
    val: int
    test: int
    classes: int = 0  # number of classes (labels, for multi-label manifests)


def probe_dataset(data: str, data_root: str | None = None, val_fraction: float = 0.1, channels: int | None = None,
                  without_test: bool = False, **options: Any) -> Probe:
    """Sizes and counts of a source without decoding it: known for the built-in sets, from a
    sample of file headers for folders and manifests; another registered source is loaded.
    ``without_test``: as :func:`load_dataset` (the test files' headers are not read either)."""
    if data in BUILTIN_SHAPES:
        (c, side, k), (train, test) = BUILTIN_SHAPES[data], BUILTIN_COUNTS[data]
        val = round(train * val_fraction)
        return Probe(side, c, train - val, val, 0 if without_test else test, k)
    if data not in _SOURCES:
        from recog.data.files import default_shape, quiet

        with quiet():  # the real scan that follows says the warnings
            scan = _scan(data, allow_empty_classes=True)
        if without_test:
            scan.files.pop("test", None)
        side, c, _ = default_shape(scan, None, channels)
        train, val, test = (len(scan.files.get(s, ())) for s in ("train", "val", "test"))
        if not val:
            val = round(train * val_fraction)
            train -= val
        return Probe(side, c, train, val, test, len(scan.classes))
    ds = load_dataset(data, data_root, val_fraction, channels=channels, without_test=without_test, **options)
    return Probe(ds.image_size, ds.channels, len(ds.train), len(ds.val or ()), len(ds.test or ()), len(ds.classes))


def load_dataset(
    data: str,
    data_root: str | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    image_size: int | None = None,
    channels: int | None = None,
    **options: Any,
) -> Dataset:
    """Load a named source or a path (manifest or image folder), with a validation split carved
    from train when the data has none.

    ``options`` go to the path sources (:func:`recog.data.files.load_scan`: loader,
    memory_fraction, max_image_pixels, allow_empty_classes, cache, device); ``without_test=True``
    leaves the test split out (a path source's test files are never opened)."""
    without_test = options.pop("without_test", False)
    if data in _SOURCES:
        ds = _SOURCES[data](data_root, **options)
        if without_test:  # a built-in set arrives whole: its test arrays are dropped before any use
            ds.test = None
    else:
        from recog.data.files import load_scan

        scan = _scan(data, options.get("allow_empty_classes", False))
        if without_test:  # the test files are never opened (recog tune)
            scan.files.pop("test", None)
        ds = load_scan(scan, image_size=image_size, channels=channels, **options)
    return hold_out(ds, val_fraction, split_seed)


def _scan(data: str, allow_empty_classes: bool) -> Scan:
    """The files of a path source: a label manifest or an image folder; anything else is an error
    naming the value (shared by loading and probing)."""
    if not str(data).strip():
        raise DataError("--data is empty: give a dataset name (" + ", ".join(list_sources()) + "), an image folder "
                        "or a label manifest (use --data . for the current folder)")
    from recog.data.manifest import is_manifest, scan_manifest

    path = Path(data).expanduser()
    if is_manifest(path):
        return scan_manifest(path)
    if path.is_dir():
        from recog.data.folder import scan_folder

        return scan_folder(path, allow_empty_classes)
    hint = did_you_mean(data, _SOURCES, " Did you mean {!r}?")
    what = "a manifest file of an unknown type" if path.is_file() else "an existing folder or manifest"
    raise DataError(f"--data {data!r} is neither a dataset name ({', '.join(list_sources())}) nor "
                    f"{what} (an image folder, or a .csv/.jsonl label manifest).{hint}")
