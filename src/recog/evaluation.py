"""Evaluation: logits over a loader, test-time augmentation, the task's report, ``predictions.csv``.
(Named ``evaluation``, not ``evaluate``: a submodule ``recog.evaluate`` would shadow the function.)

Test-time augmentation averages the views the model was trained with, read from its weights'
metadata (flip, translate and whether shifted views are wanted), built once per evaluation.
"""

from __future__ import annotations

import csv
import functools
import io
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from recog.config import MODALITIES
from recog.data.augment import flip, translate
from recog.data.splits import AnySplit, FileSplit, Split
from recog.data.stream import make_loader
from recog.device import autocast
from recog.errors import DataError
from recog.fileio import atomic_write_text
from recog.inference import check_outputs
from recog.tasks import Batch, Classification, Task

if TYPE_CHECKING:
    from recog.inference import Classifier

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


def _tta_forward(model: nn.Module, task: Task, views: list[View], batch: Batch) -> torch.Tensor:
    """The task's logits of the weighted mean of the views' probabilities."""
    x = batch[0]
    probs = 0.0
    for f, dy, dx, weight in views:
        v = flip(x, torch.ones(len(x), dtype=torch.bool, device=x.device)) if f else x
        if dy or dx:
            n = len(v)
            v = translate(v, torch.full((n,), dy, device=v.device), torch.full((n,), dx, device=v.device), 1)
        probs = probs + weight * task.probabilities(task.forward(model, (v, *batch[1:])))
    return task.logits_of(probs)


@torch.no_grad()
def collect_logits(
    model: nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    precision: str = "fp32",
    task: Task | None = None,
    views: list[View] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 logits, targets) over a loader with ``model`` in eval mode, on the CPU. With ``views``
    (test-time augmentation), the logits of the weighted mean of the views' probabilities."""
    task = task or Classification()
    forward: Callable[[Batch], torch.Tensor] = functools.partial(task.forward, model)
    if views and not (len(views) == 1 and views[0][:3] == (False, 0, 0)):
        forward = functools.partial(_tta_forward, model, task, views)
    was_training = model.training
    model.eval()
    outs, targets = [], []
    with autocast(device, precision):
        for batch in loader:
            outs.append(forward(batch).float().cpu())
            targets.append(task.targets(batch).cpu())
    model.train(was_training)
    if not outs:
        raise DataError("no image of the split could be read: every file failed (see the warnings)")
    return torch.cat(outs), torch.cat(targets)


Gather = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def evaluate_split(clf: Classifier, split: AnySplit, split_name: str, precision: str = "fp32", tta: bool = False,
                   batch_size: int = 256, workers: int | None = None, verbose: bool = True,
                   part: AnySplit | None = None, gather: Gather | None = None) -> tuple[dict[str, Any], list[list[Any]]]:
    """The task's report on ``split`` and the rows of ``predictions.csv`` (``verbose``: notes on stderr;
    under torchrun only rank 0 says them). Several processes: each evaluates its ``part`` of the split
    and ``gather`` puts their logits and targets together in the split's order."""
    started = time.perf_counter()
    meta = clf.meta
    loader = make_loader(split if part is None else part, meta["channels"], meta["image_size"], batch_size,
                         clf.normalize, clf.device, workers=workers)
    views = views_for(meta) if tta else None
    if tta and len(views) == 1 and verbose:
        print("note: --tta has no views for this model (trained without flip or translate); plain evaluation",
              file=sys.stderr)
    logits, targets = collect_logits(clf.model, loader, clf.device, precision, clf.task, views)
    if gather is not None:
        logits, targets = gather(logits, targets)
    check_outputs(logits, clf.source)
    report = clf.task.report(logits, targets, clf.classes)
    report.update(split=split_name, tta=bool(views and len(views) > 1), seconds=round(time.perf_counter() - started, 2))
    names = _names(split)
    rows = [[name, *row] for name, row in zip(names, clf.task.prediction_rows(logits, targets, clf.classes))]
    return report, rows


def _names(split: AnySplit) -> list[str]:
    """What ``predictions.csv`` names each image by: its file, or its index in the split."""
    if isinstance(split, FileSplit):
        return list(split.paths)
    if isinstance(split, Split) and split.paths is not None:
        return list(split.paths)
    return [str(i) for i in range(len(split))]


def write_predictions(path: Path, rows: list[list[Any]]) -> None:
    """``predictions.csv``: image (path or index), true, predicted, probability — sort by probability
    to find the most confident mistakes."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["image", "true", "predicted", "probability"])
    writer.writerows([name, true, pred, f"{prob:.6f}"] for name, true, pred, prob in rows)
    atomic_write_text(path, buf.getvalue())


def ablation(clf: Classifier, split: AnySplit, split_name: str, both: dict[str, Any], precision: str = "fp32",
             tta: bool = False, batch_size: int = 256, workers: int | None = None) -> list[dict[str, Any]]:
    """A fusion model evaluated with the image only (the empty text in place of each text) and the
    text only (its learned "no image" in place of the image), beside ``both``, its report on the
    same split with both inputs: one row per input set with the task's headline metric."""
    model = clf.model
    if getattr(model, "modalities", None) != MODALITIES:
        raise DataError(f"--ablate is for fusion models trained on image and text; {clf.source or 'this model'} "
                        f"learned from {', '.join(getattr(model, 'modalities', ('image',)))} only")
    key = "map_macro" if both.get("task") == "multilabel" else "accuracy"

    def row(inputs: tuple[str, ...], report: dict[str, Any]) -> dict[str, Any]:
        return {"inputs": "+".join(inputs), "metric": key, "value": report[key], "num_images": report["num_images"]}

    rows = []
    try:
        for inputs in ((m,) for m in MODALITIES):
            model.use = inputs
            rows.append(row(inputs, evaluate_split(clf, split, split_name, precision, tta, batch_size, workers,
                                                   verbose=False)[0]))
    finally:
        model.use = model.modalities
    return rows + [row(MODALITIES, both)]
