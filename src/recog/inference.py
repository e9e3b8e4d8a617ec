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
from recog.models import create_model
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

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(images_u8))

    def read(self, source: str | os.PathLike | bytes) -> torch.Tensor:
        """One image file or its bytes as the model's uint8 input (C, H, W), decoded as in training."""
        return torch.from_numpy(load_image(source, self.meta["channels"], self.meta["image_size"]))

    @torch.no_grad()
    def predict_images(self, images_u8: torch.Tensor, top_k: int = 5) -> list[dict[str, Any]]:
        """Per image the task's answer: ``{"top": [{class, prob}…]}`` (single-label, top-k) or
        ``{"labels": [{class, prob}…]}`` (multi-label: every label over its threshold)."""
        self.eval()
        logits = self(images_u8.to(self.device)).float()
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
) -> list[dict[str, Any]]:
    """Per image ``{"path", "top": [{"class", "prob"}…]}`` (single-label) or ``{"path", "labels":
    [...]}`` (multi-label); unreadable files get ``"error"`` (and ``"kind"``) instead."""
    clf = source if isinstance(source, Classifier) else load(source, device)
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    paths = image_files([images] if isinstance(images, (str, os.PathLike)) else images)
    return answer_files(paths, clf.read, lambda xs: clf.predict_images(torch.stack(xs), top_k), batch_size)
