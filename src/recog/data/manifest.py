"""Label manifests: a CSV or JSONL file that names each image and its label(s).

    image,labels,split                      {"image": "a.jpg", "labels": ["cat", "animal"]}
    photos/a.jpg,cat;animal,train           {"image": "b.jpg", "labels": "dog;animal", "split": "val"}

- ``labels``: several labels per image, ``;``-separated (or a JSON list): multi-label data.
  ``label``: one class per image: a single-label manifest.
- ``text`` (optional): a caption or description per item, for fusion models
  (``--model fusion:airnet``); an empty or missing text is allowed (counted in the summary).
- ``split`` (optional): train, val or test. Or ``--data`` names a folder that holds
  ``train.csv`` / ``val.csv`` / ``test.csv`` (or ``.jsonl``), one file per split.
- Relative image paths resolve from the manifest's own folder. A missing image is skipped and
  listed in ``skipped.csv``, as with image folders; decoding is :mod:`recog.data.files`'.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from recog.data.files import SPLITS, Label, Scan, warn
from recog.errors import DataError, did_you_mean

MANIFEST_SUFFIXES = (".csv", ".jsonl")
COLUMNS = ("image", "labels", "label", "split", "text")


def is_manifest(path: Path) -> bool:
    """A manifest file, or a folder holding ``train.csv``/``train.jsonl``."""
    if path.is_file():
        return path.suffix.lower() in MANIFEST_SUFFIXES
    return path.is_dir() and any((path / f"train{s}").is_file() for s in MANIFEST_SUFFIXES)


def _rows(path: Path) -> list[dict[str, Any]]:
    """The manifest's rows as dicts, with their columns checked."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the manifest {path}: {exc}") from None
    if path.suffix.lower() == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {n}: not a JSON object ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
        columns = sorted({k for row in rows for k in row})
    else:
        reader = csv.DictReader(text.splitlines())
        columns = [c.strip() for c in reader.fieldnames or []]
        rows = [{k.strip(): v for k, v in row.items() if k is not None} for row in reader]
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        hint = did_you_mean(unknown[0], COLUMNS)
        raise DataError(f"{path}: unknown column {unknown[0]!r}{hint} (a manifest has image, labels or label, "
                        f"and optionally split and text)")
    if "image" not in columns or ("labels" in columns) == ("label" in columns):
        raise DataError(f"{path}: a manifest needs an 'image' column and one of 'labels' (several per image, "
                        f"';'-separated) or 'label' (one per image); found {', '.join(columns) or 'no columns'}")
    if not rows:
        raise DataError(f"{path}: the manifest has no rows")
    return rows


def _labels(row: dict[str, Any], key: str) -> list[str]:
    value = row.get(key)
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(";")
    return [str(v).strip() for v in items if str(v).strip()]


def scan_manifest(path: Path) -> Scan:
    """Classes (sorted label names) and (image, label) pairs per split."""
    files = [path] if path.is_file() else [p for s in SPLITS for p in (path / f"{s}{x}" for x in MANIFEST_SUFFIXES)
                                            if p.is_file()]
    tables = {f: _rows(f) for f in files}
    columns_of = {f: {k for row in rows for k in row} for f, rows in tables.items()}
    kinds = {"labels" in columns for columns in columns_of.values()}
    if len(kinds) > 1:
        raise DataError(f"the manifests in {path} mix 'labels' and 'label' columns")
    multi = kinds.pop()
    key = "labels" if multi else "label"
    has_text = any("text" in columns for columns in columns_of.values())
    entries: dict[str, list[tuple[Path, list[str], str]]] = {}
    for f, rows in tables.items():
        for n, row in enumerate(rows, 2):
            split = str(row.get("split") or (f.stem if path.is_dir() else "train")).strip().lower()
            if split not in SPLITS:
                raise DataError(f"{f}, row {n}: split {split!r} is not one of {', '.join(SPLITS)}")
            image = str(row.get("image") or "").strip()
            if not image:
                raise DataError(f"{f}, row {n}: no image path")
            names = _labels(row, key)
            if not multi and len(names) != 1:
                raise DataError(f"{f}, row {n}: a 'label' column takes exactly one class, got {names or 'none'}")
            text = row.get("text")
            text = "" if text is None else str(text).strip()
            entries.setdefault(split, []).append(((f.parent / image).expanduser(), names, text))
    if "train" not in entries:
        raise DataError(f"{path}: no training rows (rows without a split column are training rows)")
    classes = sorted({name for rows in entries.values() for _, names, _ in rows for name in names})
    if not classes:
        raise DataError(f"{path}: every row's label list is empty: there is nothing to learn")
    index = {c: i for i, c in enumerate(classes)}
    pairs: dict[str, list[tuple[str, Label]]] = {}
    texts: dict[str, list[str]] = {}
    skipped: list[tuple[str, str]] = []
    for split, rows in entries.items():
        kept = []
        for image, names, text in rows:
            if not image.is_file():
                skipped.append((str(image), "file not found (named in the manifest)"))
                continue
            texts.setdefault(split, []).append(text)
            if multi:
                hot = [0] * len(classes)
                for name in names:
                    hot[index[name]] = 1
                kept.append((str(image), tuple(hot)))
            else:
                kept.append((str(image), index[names[0]]))
        pairs[split] = kept
    if skipped:
        warn(f"{len(skipped)} images named in {path} were not found (first: {skipped[0][0]}); "
             f"they are listed in the run folder's skipped.csv")
    _warn_repeats(path, pairs)
    return Scan(path, classes, pairs, multilabel=multi, skipped=skipped,
                texts={split: texts.get(split, []) for split in pairs} if has_text else None)


def _warn_repeats(path: Path, pairs: dict[str, list[tuple[str, Label]]]) -> None:
    """Warn about images listed twice in one split (they weigh double) and images in two splits, by path
    or by content (the same bytes under another name): a test image also trained on makes the test
    score measure memory. Contents are compared only among files of equal size (hashed then)."""
    for split, rows in pairs.items():
        seen: set[str] = set()
        twice = []
        for f, _ in rows:
            key = os.path.realpath(f)
            if key in seen:
                twice.append(f)
            seen.add(key)
        if twice:
            warn(f"{len(twice)} rows of the {split} split of {path} repeat an image listed before (first: "
                 f"{twice[0]}): each repeat weighs it once more")
    splits = list(pairs)
    real = {split: {os.path.realpath(f) for f, _ in pairs[split]} for split in splits}
    by_size: dict[int, dict[str, list[str]]] = {}
    for split in splits:
        for f in real[split]:
            by_size.setdefault(os.path.getsize(f), {}).setdefault(split, []).append(f)
    digests: dict[str, dict[str, str]] = {split: {} for split in splits}
    for group in by_size.values():
        if len(group) > 1:  # files of this size in two splits or more: their contents are compared
            for split, files in group.items():
                for f in files:
                    digests[split][hashlib.sha256(Path(f).read_bytes()).hexdigest()] = f
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            shared = sorted(real[a] & real[b])
            same = sorted(digests[b][d] for d in digests[a].keys() & digests[b].keys()
                          if digests[b][d] not in real[a])
            if shared or same:
                first = (shared or same)[0]
                warn(f"{len(shared) + len(same)} images of the {a} split of {path} are also in its {b} split "
                     f"({len(shared)} by path, {len(same)} by content; first: {first}): the {b} score then "
                     f"measures what was {'trained on' if a == 'train' else 'seen'}, not new images")
