"""Image folders: ``PATH/train/<class>/*`` with ``PATH/val`` and/or ``PATH/test``, or ``PATH/<class>/*``.

The folder is scanned once: class indices follow sorted folder names; hidden files and folders
(a leading dot) are never classes or images; files without an image extension are ignored; a
symlink loop ends that branch with a warning. Decoding and the cache are :mod:`recog.data.files`'.
recog only reads the folder: nothing is ever written there.
"""

from __future__ import annotations

import os
from pathlib import Path

from recog.data.files import SPLITS, Scan, check_empty, warn
from recog.data.image import is_image_file
from recog.errors import DataError


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _forbidden_link(real: str, class_real: str, data_real: str) -> str | None:
    """Why a folder (reached through a link) must not be walked from a class folder: it is the dataset
    folder or above it (every class would be relabelled), or another class or split inside it."""
    if _inside(data_real, real):
        return "the dataset folder or a folder above it"
    if _inside(real, data_real) and not _inside(real, class_real):
        return "another class or split folder of the dataset"
    return None


def _image_files(class_dir: Path, data_root: Path) -> list[str]:
    """Image files below ``class_dir`` (nested folders too), skipping hidden ones. Links to folders
    outside the dataset are followed; a link back into the dataset (its root, a folder above it,
    another class or split) is never walked, and a loop ends its branch; each is warned about."""
    files: list[str] = []
    seen: set[str] = set()
    class_real, data_real = os.path.realpath(class_dir), os.path.realpath(data_root)
    for root, dirs, names in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            warn(f"symlink loop at {root}; that branch is not scanned again")
            dirs[:] = []
            continue
        seen.add(real)
        kept = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            target = os.path.realpath(os.path.join(root, d))
            why = _forbidden_link(target, class_real, data_real)
            if why is None:
                kept.append(d)
            else:
                warn(f"not following {os.path.join(root, d)} -> {target}: it leads to {why}, whose images "
                     f"would take this class's label")
        dirs[:] = kept
        files.extend(os.path.join(root, n) for n in sorted(names) if is_image_file(Path(n)))
    return files


def scan_folder(path: Path, allow_empty_classes: bool = False) -> Scan:
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
            found = _image_files(class_dir, path)
            if split == "train" and not found:
                empty.append(str(class_dir))
            pairs.extend((f, index[class_dir.name]) for f in found)
        files[split] = pairs
    check_empty(empty, allow_empty_classes, "holds no images")
    return Scan(path, classes, files, empty=empty, train_root=roots["train"])
