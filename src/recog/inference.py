"""Inference: a :class:`Classifier` is the preprocessing module + the model + what the weights carry
(task, classes, size, thresholds); :func:`load` builds one from a run folder or weights file,
:func:`predict` runs it on image files or their bytes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recog.config import TrainConfig, make_config
from recog.data.image import answer_files, image_files, load_image
from recog.data.loader import Normalize
from recog.device import resolve_device
from recog.errors import ConfigError, WeightsError
from recog.text import DEFAULT_ENCODER, DEFAULT_PROMPT
from recog.models import create_model, feature_width, head, replace_head
from recog.tasks import Task, task_from_meta
from recog.weights import load_into, read_weights


class Classifier(nn.Module):
    """uint8 images (N, C, H, W) at the model's size -> logits: ``Normalize`` then the model, one
    module (an exporter can put the preprocessing inside the graph)."""

    def __init__(self, model: nn.Module, meta: dict[str, Any], device: torch.device, source: Path | None = None,
                 config: TrainConfig | None = None) -> None:
        super().__init__()
        self.normalize = Normalize(meta["mean"], meta["std"], device)
        self.model = model
        self.meta, self.device, self.source, self.config = meta, device, source, config
        self.task: Task = task_from_meta(meta)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def set_classes(self, classes: Sequence[str]) -> None:
        """Classify among ``classes``, given as text (a model trained with ``--head text``): their prompt
        embeddings, made with the training's prompts and text encoder, replace the trained ones —
        classes never trained on included. Needs ``recog[text]``."""
        from recog.models.heads import TextHead
        from recog.text import class_prompts

        names = [c.strip() for c in classes if c.strip()]
        text_head = head(self.model)[1]
        if self.meta.get("head") != "text" or not isinstance(text_head, TextHead):
            raise ConfigError(f"--classes needs a model trained with --head text; {self.source or 'this model'} has "
                              f"a linear head over its own {len(self.classes)} classes")
        if len(names) < 2 or len(set(names)) != len(names):
            raise ConfigError(f"--classes takes two or more different names, got {list(classes)}")
        encoder = self.meta.get("text_encoder")
        text_head.set_classes(class_prompts(names, self.meta.get("prompt") or DEFAULT_PROMPT,
                                            None if encoder == DEFAULT_ENCODER else encoder, verbose=False))
        self.meta = {**self.meta, "classes": names}
        self.task = task_from_meta(self.meta)

    @property
    def takes_text(self) -> bool:
        """A fusion model: each image may come with a text (``predict(..., texts=)``)."""
        return "text" in self.meta.get("inputs", ())

    def forward(self, images_u8: torch.Tensor, *text: torch.Tensor) -> torch.Tensor:
        """Logits; a fusion model also takes the texts' embeddings (none: each image without text)."""
        return self.model(self.normalize(images_u8), *text)

    def embed(self, texts: Sequence[str], cache: bool = True) -> torch.Tensor:
        """The texts' embeddings by the encoder the model was trained with (needs ``recog[text]``);
        ``cache``: as :func:`recog.text.embed`."""
        from recog.text import embed

        if not self.takes_text:
            raise ConfigError(f"text was given, but {self.source or 'this model'} takes images only (train with "
                              f"--model fusion:NAME on a manifest with a text column for image + text)")
        return embed(list(texts), self.meta.get("text_encoder"), cache).to(self.device)

    def read(self, source: str | os.PathLike | bytes) -> torch.Tensor:
        """One image file or its bytes as the model's uint8 input (C, H, W), decoded as in training."""
        return torch.from_numpy(load_image(source, self.meta["channels"], self.meta["image_size"]))

    @torch.no_grad()
    def predict_images(self, images_u8: torch.Tensor, top_k: int = 5,
                       text: torch.Tensor | None = None) -> list[dict[str, Any]]:
        """Per image the task's answer: ``{"top": [{class, prob}…]}`` (single-label, top-k) or
        ``{"labels": [{class, prob}…]}`` (multi-label: every label over its threshold). ``text``: a
        fusion model's text embeddings, one row per image (:meth:`embed`)."""
        self.eval()
        extra = () if text is None else (text.to(self.device),)
        logits = self(images_u8.to(self.device), *extra).float()
        check_outputs(logits, self.source)
        return self.task.predict(logits, self.classes, top_k)


def check_outputs(logits: torch.Tensor, source: Path | None) -> None:
    """A model whose outputs are NaN or infinite is broken: an error, never a report of chance accuracy."""
    if not torch.isfinite(logits).all():
        raise WeightsError(f"the model in {source or 'memory'} gives non-finite outputs (NaN or inf): its weights "
                           f"are broken; use another checkpoint")


def weights_file(source: str | os.PathLike) -> tuple[Path, Path | None]:
    """(weights file, run folder or None) for a run folder or a weights file."""
    path = Path(source).expanduser()
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / "weights" / name).is_file():
                return path / "weights" / name, path
        raise WeightsError(f"{path} is not a run folder: no weights/best.safetensors in it")
    if not path.exists():
        raise WeightsError(f"no run folder or weights file at {path}")
    return path, None


def load(source: str | os.PathLike, device: str = "auto") -> Classifier:
    """A run folder or a ``.safetensors`` file saved by recog, ready to predict."""
    path, run_dir = weights_file(source)
    state, meta = read_weights(path)
    if meta is None:
        raise WeightsError(f"{path} carries no recog metadata (classes, preprocessing); "
                           f"use weights saved by recog, or pass it to training with --weights")
    dev = resolve_device(device)
    model = create_model(meta["model"], len(meta["classes"]), meta["channels"], meta["image_size"],
                         **meta.get("model_args", {}))
    if meta.get("head") == "text":  # its prompt embeddings are in the weights: no text encoder needed here
        from recog.models.heads import TextHead

        prompts = state.get(f"{head(model)[0]}.prompts")
        if prompts is None:
            raise WeightsError(f"{path} says it has a text head, but its weights hold no prompt embeddings")
        replace_head(model, TextHead(feature_width(model), torch.zeros_like(prompts)))
    load_into(model, state, str(path))
    model.to(dev).eval()
    cfg = make_config(run_dir / "config.yaml", verbose=False) if run_dir else None
    if cfg is not None and cfg.channels_last:  # as it was trained: faster convolutions (1.3x on CPU)
        model.to(memory_format=torch.channels_last)
    return Classifier(model, meta, dev, path, cfg)


def predict(
    source: str | os.PathLike | Classifier,
    images: str | os.PathLike | Sequence[str | os.PathLike],
    top_k: int = 5,
    device: str = "auto",
    batch_size: int = 64,
    classes: Sequence[str] | None = None,
    texts: str | Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Per image ``{"path", "top": [{"class", "prob"}…]}`` (single-label) or ``{"path", "labels":
    [...]}`` (multi-label); unreadable files get ``"error"`` (and ``"kind"``) instead. ``classes``: a
    text-head model chooses among these names instead of its trained classes. ``texts`` (a fusion
    model): one text for every image, or one per image file in order; none: the images alone."""
    clf = source if isinstance(source, Classifier) else load(source, device)
    if classes is not None:
        clf.set_classes(classes)
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    paths = image_files([images] if isinstance(images, (str, os.PathLike)) else images)
    if texts is None:
        return answer_files(paths, clf.read, lambda xs: clf.predict_images(torch.stack(xs), top_k), batch_size)
    texts = [texts] if isinstance(texts, str) else list(texts)
    if len(texts) == 1:
        texts = texts * len(paths)
    if len(texts) != len(paths):
        raise ConfigError(f"{len(texts)} texts for {len(paths)} images: give one text for all of them, or one "
                          f"per image in order")
    vectors = dict(zip(map(str, paths), clf.embed(texts)))

    def answer(items: list[tuple[torch.Tensor, torch.Tensor]]) -> list[dict[str, Any]]:
        return clf.predict_images(torch.stack([x for x, _ in items]), top_k, torch.stack([t for _, t in items]))
    return answer_files(paths, lambda p: (clf.read(p), vectors[str(p)]), answer, batch_size)
