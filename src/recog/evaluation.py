"""Evaluation: logits over a loader, test-time augmentation, the task's report, ``predictions.csv``.
(Named ``evaluation``, not ``evaluate``: a submodule ``recog.evaluate`` would shadow the function.)

Test-time augmentation averages the views the model was trained with, read from its weights'
metadata (flip, translate and whether shifted views are wanted), built once per evaluation.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from recog.config import MODALITIES
from recog.data.splits import AnySplit, FileSplit, Split
from recog.data.stream import make_loader
from recog.device import autocast, eval_mode
from recog.data import load_dataset
from recog.errors import ConfigError, DataError
from recog.fileio import atomic_write_text, check_folder, next_run_dir
from recog.inference import View, check_outputs, load, tta_forward
from recog.memory import reuse_freed_memory
from recog.report import write_report
from recog.runs import PREDICTIONS, data_options, run_data
from recog.tasks import Batch, Classification, Task, report_markdown

if TYPE_CHECKING:
    from recog.inference import Classifier

@torch.no_grad()
def collect_logits(
    model: nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    precision: str = "fp32",
    task: Task | None = None,
    views: list[View] | None = None,
    confidence: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 logits, targets) over a loader with ``model`` in eval mode, on the CPU. With ``views``
    (test-time augmentation), the logits of the weighted mean of the views' probabilities (only for
    images the plain view is less than ``confidence`` sure of: selective TTA)."""
    task = task or Classification()
    forward: Callable[[Batch], torch.Tensor] = functools.partial(task.forward, model)
    if views:
        forward = functools.partial(tta_forward, model, task, views, confidence=confidence)
    outs, targets = [], []
    with eval_mode(model), autocast(device, precision):
        for batch in loader:
            outs.append(forward(batch).float().cpu())
            targets.append(task.targets(batch).cpu())
    if not outs:
        raise DataError("no image of the split could be read: every file failed (see the warnings)")
    return torch.cat(outs), torch.cat(targets)


Gather = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def evaluate_split(clf: Classifier, split: AnySplit, split_name: str, batch_size: int = 256,
                   workers: int | None = None, part: AnySplit | None = None,
                   gather: Gather | None = None) -> tuple[dict[str, Any], list[list[Any]]]:
    """The task's report on ``split`` and the rows of ``predictions.csv``, under the classifier's
    inference policy (precision, TTA views). Several processes: each evaluates its ``part`` of the
    split and ``gather`` puts their logits and targets together in the split's order."""
    started = time.perf_counter()
    meta = clf.meta
    loader = make_loader(split if part is None else part, meta["channels"], meta["image_size"], batch_size,
                         clf.normalize, clf.device, workers=workers)
    logits, targets = collect_logits(clf.model, loader, clf.device, clf.policy.precision, clf.task,
                                     list(clf.policy.views), clf.policy.confidence)
    if gather is not None:
        logits, targets = gather(logits, targets)
    check_outputs(logits, clf.source)
    report = clf.task.report(logits, targets, clf.classes)
    report.update(split=split_name, tta=clf.policy.tta, precision=clf.policy.precision,
                  seconds=round(time.perf_counter() - started, 2))
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


def ablation(clf: Classifier, split: AnySplit, split_name: str, both: dict[str, Any], batch_size: int = 256,
             workers: int | None = None) -> list[dict[str, Any]]:
    """A fusion model evaluated with the image only (the empty text in place of each text) and the
    text only (its learned "no image" in place of the image), beside ``both``, its report on the
    same split with both inputs: one row per input set with the task's headline metric."""
    model = clf.model
    if getattr(model, "modalities", None) != MODALITIES:
        raise DataError(f"--ablate is for fusion models trained on image and text; {clf.source or 'this model'} "
                        f"learned from {', '.join(getattr(model, 'modalities', ('image',)))} only")
    def row(inputs: tuple[str, ...], report: dict[str, Any]) -> dict[str, Any]:
        key, value = clf.task.headline(report)
        return {"inputs": "+".join(inputs), "metric": key, "value": value, "num_images": report["num_images"]}

    rows = []
    try:
        for inputs in ((m,) for m in MODALITIES):
            model.use = inputs
            rows.append(row(inputs, evaluate_split(clf, split, split_name, batch_size, workers)[0]))
    finally:
        model.use = model.modalities
    return rows + [row(MODALITIES, both)]


def _with_classes(ds: Any, classes: list[str], data: str) -> Any:
    """The data with its labels renumbered as the model's ``classes`` (which must hold each of its
    classes): a text head given --classes may choose among more names than the data has."""
    if ds.classes == classes:
        return ds
    missing = [c for c in ds.classes if c not in classes]
    if missing or ds.multilabel:
        raise DataError(f"the classes of {data} ({', '.join(ds.classes[:6])}…) are not the model's "
                        f"({', '.join(classes[:6])}…)" + (f"; missing: {', '.join(missing[:6])}" if missing else ""))
    order = torch.tensor([classes.index(c) for c in ds.classes])
    renumber = {name: dataclasses.replace(split, labels=order[split.labels])
                for name, split in (("train", ds.train), ("val", ds.val), ("test", ds.test)) if split is not None}
    return dataclasses.replace(ds, classes=list(classes), **renumber)


def _labelled_folder(data: str) -> str:
    """A folder to evaluate on that holds only ``test/`` (or ``val/``) and no ``train/``: that split."""
    path = Path(data).expanduser()
    if path.is_dir() and not (path / "train").is_dir():
        for split in ("test", "val"):
            if (path / split).is_dir():
                return str(path / split)
    return data


def evaluate(
    source: str | os.PathLike,
    data: str | None = None,
    data_root: str | None = None,
    tta: bool | None = None,
    out: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 256,
    verbose: bool = True,
    classes: list[str] | None = None,
    ablate: bool = False,
    precision: str = "auto",
) -> dict[str, Any]:
    """Evaluate a run or weights file on ``data`` (default: the run's own data) and write a report
    and ``predictions.csv``. ``precision`` and ``tta``: the inference policy (defaults: as the run's
    final evaluation did; :func:`recog.inference.inference_policy`). ``classes`` (a text-head model):
    choose among these names; the data's classes must be among them. ``ablate`` (a fusion model): also
    image only, text only and both, as ``report["ablation"]``."""
    if out is not None:
        check_folder(out, "--out")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    clf = load(source, device, precision, tta, verbose)
    if verbose:
        print(f"inference: {clf.policy.describe()} (--precision, --tta/--no-tta to change)", file=sys.stderr)
    if classes is not None:
        clf.set_classes(classes)
    cfg = clf.config
    if data is None:
        if cfg is None:
            raise ConfigError("which data? pass --data (a dataset name or image folder) for a bare weights file")
        data, data_root = cfg.data, data_root or cfg.data_root
    same = cfg is not None and data == cfg.data
    data = data if same else _labelled_folder(data)
    if same:
        ds = run_data(cfg.replace(data_root=data_root), clf.meta["image_size"], clf.meta["channels"], clf.device)
    else:
        options = {**data_options(cfg, clf.device), "without_test": False} if cfg is not None else {
            "device": str(clf.device)}  # other data: its test split is what the user asks to evaluate on
        ds = load_dataset(data, data_root, 0.0, 0, clf.meta["image_size"], clf.meta["channels"], **options)
    if ds.classes != clf.classes and clf.meta.get("head") == "text" and classes is None:
        if verbose:  # labels as language: the data's own class names are the label set
            print(f"note: {data} has other classes than the model was trained on; its text head chooses among "
                  f"them: {', '.join(ds.classes[:8])}{' …' if len(ds.classes) > 8 else ''}", file=sys.stderr)
        clf.set_classes(ds.classes)
    ds = _with_classes(ds, clf.classes, data)
    if clf.takes_text:  # image + text: the data's texts, embedded by the model's own encoder
        from recog.text import attach_text

        attach_text(ds, clf.meta.get("text_encoder"))
    elif ablate:
        raise ConfigError(f"--ablate is for image + text (fusion) models; {clf.source} takes images only")
    if (ds.channels, ds.image_size) != (clf.meta["channels"], clf.meta["image_size"]):
        raise DataError(f"{data} has {ds.channels}x{ds.image_size}px images; the model takes "
                        f"{clf.meta['channels']}x{clf.meta['image_size']}px")
    split_name, split = ds.eval_split or ("all", ds.train)  # a labelled folder without splits: all of it
    if ds.eval_split is None and same:
        raise DataError(f"{data} has no test or val split to evaluate on")
    workers = cfg.workers if cfg else None
    with reuse_freed_memory(clf.device.type == "cpu" and (cfg.reuse_memory if cfg else True)):  # 1.4x with TTA
        report, rows = evaluate_split(clf, split, split_name, batch_size, workers)
        if ablate:  # both inputs: the report just made
            report["ablation"] = ablation(clf, split, split_name, report, batch_size, workers)
    report["title"] = f"{clf.source} on {data}"
    out_dir = Path(out) if out else next_run_dir(cfg.project if cfg else "runs", "eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_report(out_dir, report, report_markdown(report))
    write_predictions(out_dir / PREDICTIONS, rows)
    report["out"] = str(out_dir)
    if verbose:
        print(f"report written to {out_dir}", file=sys.stderr)
    return report

