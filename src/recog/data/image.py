"""Decoding one image file to the model's channels and size, the same way in training and prediction."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white


class ImageReadError(Exception):
    """One file could not be decoded; the message says why."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _to_mode(im, channels: int):  # noqa: ANN001, ANN202 (PIL types imported lazily)
    from PIL import Image

    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16/32-bit greyscale: scale the value range to 8 bits instead of clipping (which turns it white)
        arr = np.asarray(im, dtype=np.float64)
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


def load_image(path: str | os.PathLike, channels: int, size: int) -> np.ndarray:
    """Decode ``path`` to a uint8 array (channels, size, size): EXIF rotation applied, first frame,
    transparency composited, 16-bit scaled. Raises :class:`ImageReadError` saying why it failed."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.seek(0)  # first frame of animations and multi-page files
                im.load()
                im = ImageOps.exif_transpose(im)
                im = _resize(_to_mode(im, channels), size)
                arr = np.asarray(im, dtype=np.uint8)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError("file disappeared before it could be read") from None
    except PermissionError:
        raise ImageReadError("no permission to read the file") from None
    except UnidentifiedImageError:
        raise ImageReadError("not an image (unrecognised content)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"too many pixels ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot decode: {exc}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.array(arr.transpose(2, 0, 1), order="C")  # a writable copy in (C, H, W)


def peek(path: Path) -> tuple[tuple[int, int], str] | None:
    """(size, mode) from the header only, or None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except Exception:  # noqa: BLE001 - any failure means: learn nothing from this file here
        return None
