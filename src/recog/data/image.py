"""Decoding one image file to the model's channels and size, the same way in training and prediction."""

from __future__ import annotations

import contextlib
import io
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recog.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default limit
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white


class ImageReadError(Exception):
    """One image could not be decoded; the message says why and ``kind`` says what went wrong, one of
    ``KINDS`` (a server maps it to a status code)."""

    KINDS = ("empty", "truncated", "not_an_image", "too_many_pixels", "unreadable")

    def __init__(self, message: str, kind: str = "unreadable") -> None:
        super().__init__(message)
        assert kind in self.KINDS, kind
        self.kind = kind


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def image_files(sources: Sequence[str | os.PathLike]) -> list[Path]:
    """The files named, and the image files below the folders named (hidden ones left out)."""
    files: list[Path] = []
    for s in sources:
        p = Path(s).expanduser()
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f)
                                and not any(part.startswith(".") for part in f.relative_to(p).parts)))
        elif p.exists():
            files.append(p)
        else:
            raise DataError(f"no such file or folder: {p}")
    return files


def read_files(paths: Sequence[Path], read: Callable[[Path], Any]) -> tuple[list[Any], list[str], list[dict[str, Any]]]:
    """(what ``read`` made of each readable file, their paths, ``{"path", "error", "kind"}`` per
    unreadable one): how predictions and explanations report bad files."""
    arrays, good, errors = [], [], []
    for p in paths:
        try:
            arrays.append(read(p))
            good.append(str(p))
        except ImageReadError as exc:
            errors.append({"path": str(p), "error": str(exc), "kind": exc.kind})
    return arrays, good, errors


def answer_files(paths: Sequence[Path], read: Callable[[Path], Any], answer: Callable[[list[Any]], list[dict]],
                 batch_size: int = 64) -> list[dict[str, Any]]:
    """Per file ``{"path", **answer}`` in the order given, reading and answering in batches;
    unreadable files get ``{"path", "error", "kind"}``. Shared by the torch and ONNX predictors."""
    results: list[dict[str, Any]] = []
    for start in range(0, len(paths), batch_size):
        arrays, good, errors = read_files(paths[start:start + batch_size], read)
        results += errors
        if arrays:
            results += [{"path": p, **out} for p, out in zip(good, answer(arrays))]
    order = {str(p): i for i, p in enumerate(paths)}
    return sorted(results, key=lambda r: order[r["path"]])


def _to_mode(im, channels: int):  # noqa: ANN001, ANN202 (PIL types imported lazily)
    from PIL import Image

    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16/32-bit greyscale: scale the value range to 8 bits instead of clipping (which turns it white)
        arr = np.asarray(im, dtype=np.float64)
        if im.mode == "F" and arr.max() <= 1.0:
            top = 1.0  # float images in [0, 1]
        else:
            top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        im = Image.alpha_composite(background, rgba)
    return im.convert("L" if channels == 1 else "RGB")


def _resize(im, size: int):  # noqa: ANN001, ANN202
    """Resize the shorter side to ``size`` and centre-crop a square (keeps the aspect ratio)."""
    from PIL import Image

    w, h = im.size
    if (w, h) == (size, size):
        return im
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0 if scale < 0.5 else None)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def set_max_image_pixels(limit: int | None) -> None:
    """Images over ``limit`` pixels are refused as decompression bombs (None: Pillow's default)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = limit if limit is not None else DEFAULT_MAX_PIXELS


_BOMB_LOCK = threading.Lock()
_bomb_users = 0  # decoders (threads) inside _bombs_as_errors
_bomb_filter: tuple | None = None


@contextlib.contextmanager
def _bombs_as_errors() -> Iterator[None]:
    """Pillow's decompression-bomb warning raised as an error while any thread decodes. Not
    ``warnings.catch_warnings``: it saves and restores the process-wide filter list, so threads that
    decode side by side restore each other's snapshots and a bomb slipped through as a printed
    warning now and then. One filter, added by the first decoder and removed by the last."""
    global _bomb_users, _bomb_filter
    from PIL import Image

    with _BOMB_LOCK:
        if _bomb_users == 0:
            warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
            _bomb_filter = warnings.filters[0]
        _bomb_users += 1
    try:
        yield
    finally:
        with _BOMB_LOCK:
            _bomb_users -= 1
            if _bomb_users == 0:  # ours only (the same object), not a user's filter that looks like it
                warnings.filters[:] = [f for f in warnings.filters if f is not _bomb_filter]
                getattr(warnings, "_filters_mutated", lambda: None)()  # the module's cache of decisions


@contextlib.contextmanager
def _read_errors() -> Iterator[None]:
    """Turn every way a file can fail to decode into :class:`ImageReadError` with a reason."""
    from PIL import Image, UnidentifiedImageError

    try:
        with _bombs_as_errors():
            yield
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError("file disappeared before it could be read", "unreadable") from None
    except PermissionError:
        raise ImageReadError("no permission to read the file", "unreadable") from None
    except IsADirectoryError:
        raise ImageReadError("a folder, not a file", "unreadable") from None
    except UnidentifiedImageError:
        raise ImageReadError("not an image (unrecognised content)", "not_an_image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"too many pixels, refused as a decompression bomb ({exc}); see --max-image-pixels",
                             "too_many_pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # a header that promises more than the file holds
        raise ImageReadError(f"cannot decode: {exc}", "truncated") from None


def open_image(source: str | os.PathLike | bytes, channels: int):  # noqa: ANN201 - a PIL image
    """Decode a file or its bytes (an upload) at its own size in the model's channels: EXIF
    rotation applied, first frame of animations and multi-page files, transparency composited,
    16-bit scaled. The type comes from the content, never from a name."""
    return _open(source, channels)[0]


def _open(source: str | os.PathLike | bytes, channels: int, size: int | None = None):  # noqa: ANN202
    """(image, original (width, height)); with ``size``, a JPEG is decoded at the smallest of its
    1/1, 1/2, 1/4, 1/8 scales whose shorter side is still at least ``size`` (libjpeg's DCT
    scaling: a 500 px photo for a 64 px input decodes several times faster)."""
    from PIL import Image, ImageOps

    with _read_errors():
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageReadError("empty (0 bytes)", "empty")
            stream = io.BytesIO(source)
        else:
            stream = Path(source)
            if stream.stat().st_size == 0:
                raise ImageReadError("empty file (0 bytes)", "empty")
        with Image.open(stream) as im:
            original = im.size
            if size is not None and im.format == "JPEG":
                w, h = im.size
                scale = size / min(w, h)
                if scale < 0.5:
                    im.draft(im.mode, (math.ceil(w * scale), math.ceil(h * scale)))
            im.seek(0)
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_mode(im, channels), original


def decode(source: str | os.PathLike | bytes, channels: int, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(uint8 array (channels, size, size), original (width, height)) of a file or its bytes;
    raises :class:`ImageReadError`."""
    im, original = _open(source, channels, size)
    with _read_errors():
        arr = np.asarray(_resize(im, size), dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.array(arr.transpose(2, 0, 1), order="C"), original  # a writable copy in (C, H, W)


def load_image(source: str | os.PathLike | bytes, channels: int, size: int) -> np.ndarray:
    """The eval preprocessing of one file (or its bytes), shared by training, evaluation and prediction."""
    return decode(source, channels, size)[0]


def peek(path: Path) -> tuple[tuple[int, int], str] | None:
    """(size, mode) from the header only, or None if unreadable."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a decompression bomb is reported once, when the file is decoded
            with Image.open(path) as im:
                return im.size, im.mode
    except Exception:  # noqa: BLE001 - any failure means: learn nothing from this file here
        return None
