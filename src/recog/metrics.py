"""Metrics beyond accuracy (top-5, per-class precision/recall/F1, confusion) and test-time augmentation."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from recog.data.augment import flip, translate
from recog.engine.trainer import collect_logits


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


def _tta_forward(model: nn.Module, x: torch.Tensor, views: list[View]) -> torch.Tensor:
    """Log of the weighted mean of the views' softmax."""
    probs = 0.0
    for f, dy, dx, weight in views:
        v = flip(x, torch.ones(len(x), dtype=torch.bool, device=x.device)) if f else x
        if dy or dx:
            n = len(v)
            v = translate(v, torch.full((n,), dy, device=v.device), torch.full((n,), dx, device=v.device), 1)
        probs = probs + weight * model(v).float().softmax(1)
    return probs.log()


def predict_logits(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    precision: str = "fp32",
    views: list[View] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) on the CPU; with ``views``, the weighted mean of the views' softmax as
    log-probabilities."""
    if not views or (len(views) == 1 and views[0][:3] == (False, 0, 0)):
        return collect_logits(model, loader, device, precision)
    return collect_logits(model, loader, device, precision, forward=functools.partial(_tta_forward, model,
                                                                                        views=views))


def classification_report(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Accuracy, top-5, per-class precision/recall/F1 with macro and weighted means, confusion matrix."""
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    k = len(classes)
    common = {"num_classes": k}
    preds = logits.argmax(1)

    def per_class(fn):  # noqa: ANN001, ANN202 - (per-class list, macro, weighted)
        return (fn(preds, labels, average="none", **common).tolist(),
                fn(preds, labels, average="macro", **common).item(),
                fn(preds, labels, average="weighted", **common).item())

    precision, macro_p, weighted_p = per_class(multiclass_precision)
    recall, macro_r, weighted_r = per_class(multiclass_recall)
    f1, macro_f1, weighted_f1 = per_class(multiclass_f1_score)
    confusion = multiclass_confusion_matrix(preds, labels, **common)
    support = confusion.sum(1).tolist()
    off = confusion.clone().fill_diagonal_(0)
    pairs = [
        {"true": classes[int(i) // k], "predicted": classes[int(i) % k], "count": int(off.view(-1)[i])}
        for i in off.view(-1).argsort(descending=True)[:10]
        if off.view(-1)[i] > 0
    ]
    return {
        "accuracy": multiclass_accuracy(preds, labels, average="micro", **common).item(),
        "top5_accuracy": (
            multiclass_accuracy(logits, labels, average="micro", top_k=5, **common).item() if k >= 10 else None
        ),
        "macro_precision": macro_p,
        "macro_recall": macro_r,
        "macro_f1": macro_f1,
        "weighted_precision": weighted_p,
        "weighted_recall": weighted_r,
        "weighted_f1": weighted_f1,
        "per_class": [
            {"class": c, "precision": precision[i], "recall": recall[i], "f1": f1[i], "support": int(support[i])}
            for i, c in enumerate(classes)
        ],
        "confusion_matrix": confusion.tolist(),
        "most_confused": pairs,
        "num_images": int(len(labels)),
        "classes": list(classes),
    }
