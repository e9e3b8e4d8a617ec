"""Inference: a :class:`Classifier` is the preprocessing module + the model + what the weights carry
(task, classes, size, thresholds); :func:`load` builds one from a run folder or weights file,
:func:`predict` runs it on image files or their bytes."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recog.config import PRECISIONS, TrainConfig
from recog.data.augment import flip, translate
from recog.data.image import answer_files, image_files, load_image
from recog.data.loader import Normalize
from recog.device import autocast, eval_mode, has_bf16, resolve_device, resolve_precision
from recog.errors import ConfigError, WeightsError
from recog.text import DEFAULT_ENCODER, DEFAULT_PROMPT
from recog.models import create_model, feature_width, head, replace_head
from recog.tasks import Batch, Task, task_from_meta
from recog.runs import check_meta, run_config, weights_file
from recog.weights import load_into, read_weights


class Classifier(nn.Module):
    """uint8 images (N, C, H, W) at the model's size -> logits: ``Normalize`` then the model, one
    module (an exporter can put the preprocessing inside the graph)."""

    def __init__(self, model: nn.Module, meta: dict[str, Any], device: torch.device, source: Path | None = None,
                 config: TrainConfig | None = None, policy: Policy | None = None) -> None:
        super().__init__()
        self.normalize = Normalize(meta["mean"], meta["std"], device)
        self.model = model
        self.meta, self.device, self.source, self.config = meta, device, source, config
        self.task: Task = task_from_meta(meta)
        self.policy = policy or inference_policy(meta, device)

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
    def logits(self, images_u8: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """fp32 logits of uint8 images under the policy (precision, TTA views), checked finite."""
        batch: Batch = (self.normalize(images_u8.to(self.device)), None,
                        *(() if text is None else (text.to(self.device),)))
        with eval_mode(self.model), autocast(self.device, self.policy.precision):
            logits = tta_forward(self.model, self.task, self.policy.views, batch, self.policy.confidence).float()
        check_outputs(logits, self.source)
        return logits

    def predict_images(self, images_u8: torch.Tensor, top_k: int = 5,
                       text: torch.Tensor | None = None) -> list[dict[str, Any]]:
        """Per image the task's answer: ``{"top": [{class, prob}…]}`` (single-label, top-k) or
        ``{"labels": [{class, prob}…]}`` (multi-label: every label over its threshold). ``text``: a
        fusion model's text embeddings, one row per image (:meth:`embed`)."""
        return self.task.predict(self.logits(images_u8, text), self.classes, top_k)


View = tuple[bool, int, int, float]  # (flip, dy, dx, weight)


def tta_views(use_flip: bool, shift: int, translate_views: bool = True) -> list[View]:
    """The weighted views TTA averages, from the augmentations the model was trained with
    (airbench's scheme): half the weight on the image as it is (and mirrored), half on one-pixel
    diagonal shifts up-left and down-right (and mirrored) when it was trained with a ``shift`` and
    ``translate_views`` (``--tta-translate``, 3x the views of flips alone) is on."""
    shift = shift if translate_views else 0
    flips = [False, True] if use_flip else [False]
    centre = [(f, 0, 0) for f in flips]
    shifted = [(f, d, d) for d in (-1, 1) for f in flips] if shift else []
    if not shifted:
        return [(*v, 1.0 / len(centre)) for v in centre]
    return [(*v, 0.5 / len(centre)) for v in centre] + [(*v, 0.5 / len(shifted)) for v in shifted]


def views_for(meta: dict[str, Any]) -> list[View]:
    """The TTA views of a model, from its weights' metadata."""
    return tta_views(bool(meta.get("flip")), int(meta.get("translate", 0)), bool(meta.get("tta_translate", True)))


def tta_forward(model: nn.Module, task: Task, views: list[View], batch: Batch,
                confidence: float | None = None) -> torch.Tensor:
    """The task's logits of the weighted mean of the views' probabilities (one plain view: the logits).
    ``confidence`` (selective TTA): images whose plain view the task is at least this sure of keep its
    answer, and only the others are seen in the other views (the plain view is the first)."""
    if len(views) == 1 and views[0][:3] == (False, 0, 0):
        return task.forward(model, batch)
    plain = views[0][:3] == (False, 0, 0)
    if confidence is None or not plain:
        return task.logits_of(_mean_probabilities(model, task, views, batch))
    first = task.probabilities(task.forward(model, batch))
    unsure = (task.confidence(first) < confidence).nonzero().flatten()
    if len(unsure):
        part = tuple(b[unsure] if isinstance(b, torch.Tensor) else b for b in batch)
        rest = _mean_probabilities(model, task, views[1:], part)
        first[unsure] = views[0][3] * first[unsure] + rest
    return task.logits_of(first)


def _mean_probabilities(model: nn.Module, task: Task, views: list[View], batch: Batch) -> torch.Tensor:
    """The views' probabilities, each times its weight, summed."""
    x = batch[0]
    probs = 0.0
    for f, dy, dx, weight in views:
        v = flip(x, torch.ones(len(x), dtype=torch.bool, device=x.device)) if f else x
        if dy or dx:
            n = len(v)
            v = translate(v, torch.full((n,), dy, device=v.device), torch.full((n,), dx, device=v.device), 1)
        probs = probs + weight * task.probabilities(task.forward(model, (v, *batch[1:])))
    return probs


# ---- the one inference policy: precision and test-time augmentation ---------------------------------

@dataclass(frozen=True)
class Policy:
    """How a model answers: its precision and the test-time augmentation views it averages. One
    function (:func:`inference_policy`) decides it for predict, eval, serve and export alike."""

    precision: str  # fp32 | bf16
    views: tuple[View, ...]  # one plain view: no TTA
    confidence: float | None = None  # selective TTA: images the plain view is this sure of get no other views

    @property
    def tta(self) -> bool:
        return len(self.views) > 1

    def describe(self) -> str:
        selective = f" below {self.confidence:.0%} confidence" if self.confidence is not None else ""
        return f"{self.precision}, " + (f"TTA {len(self.views)} views{selective}" if self.tta else "no TTA")


def inference_policy(meta: dict[str, Any], device: torch.device, precision: str = "auto", tta: bool | None = None,
                     verbose: bool = False) -> Policy:
    """``precision`` auto: the precision the run evaluated with (its weights' metadata; fp32 for files
    that do not say) where this device has bf16 units, else fp32; ``tta`` None: as the run evaluated
    (its metadata; off for files that do not say). The same defaults for every command, so the same
    image gets the same answer from predict, eval and serve."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        precision = meta.get("precision", "fp32") if has_bf16(device) else "fp32"
    else:
        precision = resolve_precision(precision, device, verbose)
    use_tta = bool(meta.get("tta", False)) if tta is None else tta
    views = tuple(views_for(meta)) if use_tta else ((False, 0, 0, 1.0),)
    if use_tta and len(views) == 1 and tta and verbose:
        print("note: --tta has no views for this model (trained without flip or translate); plain evaluation",
              file=sys.stderr)
    return Policy(precision, views, meta.get("tta_confidence"))


def check_outputs(logits: torch.Tensor, source: Path | None) -> None:
    """A model whose outputs are NaN or infinite is broken: an error, never a report of chance accuracy."""
    if not torch.isfinite(logits).all():
        raise WeightsError(f"the model in {source or 'memory'} gives non-finite outputs (NaN or inf): its weights "
                           f"are broken; use another checkpoint")


def load(source: str | os.PathLike, device: str = "auto", precision: str = "auto", tta: bool | None = None,
         verbose: bool = False) -> Classifier:
    """A run folder or a ``.safetensors`` file saved by recog, ready to predict with the
    :func:`inference_policy` of ``precision`` and ``tta`` (defaults: as the run evaluated)."""
    path, run_dir = weights_file(source)
    state, meta = read_weights(path)
    if meta is None:
        raise WeightsError(f"{path} carries no recog metadata (classes, preprocessing); "
                           f"use weights saved by recog, or pass it to training with --weights")
    check_meta(meta, path)
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
    cfg = run_config(run_dir) if run_dir else None
    if cfg is not None and cfg.channels_last:  # as it was trained: faster convolutions (1.3x on CPU)
        model.to(memory_format=torch.channels_last)
    return Classifier(model, meta, dev, path, cfg, inference_policy(meta, dev, precision, tta, verbose))


def predict(
    source: str | os.PathLike | Classifier,
    images: str | os.PathLike | Sequence[str | os.PathLike],
    top_k: int = 5,
    device: str = "auto",
    batch_size: int = 64,
    classes: Sequence[str] | None = None,
    texts: str | Sequence[str] | None = None,
    precision: str = "auto",
    tta: bool | None = None,
) -> list[dict[str, Any]]:
    """Per image ``{"path", "top": [{"class", "prob"}…]}`` (single-label) or ``{"path", "labels":
    [...]}`` (multi-label); unreadable files get ``"error"`` (and ``"kind"``) instead. ``source``: a run
    folder, weights file, :class:`Classifier` or exported ``.onnx`` file. ``classes``: a text-head model
    chooses among these names instead of its trained classes. ``texts`` (a fusion model): one text for
    every image, or one per image file in order; none: the images alone. ``precision`` and ``tta``: the
    :func:`inference_policy` (defaults: as the run's own evaluation)."""
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if not isinstance(source, Classifier) and str(source).lower().endswith(".onnx"):
        return _predict_onnx(source, images, top_k, batch_size, classes, texts, precision, tta)
    if isinstance(source, Classifier):
        clf = source
        if precision != "auto" or tta is not None:
            clf.policy = inference_policy(clf.meta, clf.device, precision, tta)
    else:
        clf = load(source, device, precision, tta)
    if classes is not None:
        clf.set_classes(classes)
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


def _predict_onnx(source: str | os.PathLike, images: Any, top_k: int, batch_size: int, classes: Any, texts: Any,
                  precision: str, tta: bool | None) -> list[dict[str, Any]]:
    """An exported file: numpy, Pillow and ONNX Runtime (:mod:`recog.onnx_predict`); it computes one fp32 view."""
    from recog.onnx_predict import predict as onnx_predict

    if classes is not None:
        raise ConfigError("classes needs the run folder or weights of a --head text model, not an .onnx file (an "
                          "exported text head carries its trained classes' prompt embeddings)")
    if texts is not None:
        raise ConfigError("text needs the run folder or weights of a fusion model, not an .onnx file (fusion "
                          "models are not exported)")
    if precision not in ("auto", "fp32") or tta:
        raise ConfigError(f"an exported .onnx file computes one view in the precision it was exported in: "
                          f"precision {precision!r}{' and TTA' if tta else ''} need the run folder or weights file")
    return onnx_predict(source, images, top_k=top_k, batch_size=batch_size)

