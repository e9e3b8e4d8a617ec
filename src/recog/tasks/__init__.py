"""Tasks: what a batch means. A task owns the targets, the loss, the logits -> predictions rule and
the metrics; the training loop, evaluation, test-time augmentation and prediction go through it.

- :class:`Classification`: one class per image (softmax, cross-entropy);
- :class:`MultiLabel`: any number of labels per image (sigmoid, binary cross-entropy, a decision
  threshold per label tuned on the validation split and saved with the weights).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from recog.errors import ConfigError

from recog.tasks.base import Batch, Task
from recog.tasks.classification import Classification
from recog.tasks.multilabel import MultiLabel

if TYPE_CHECKING:
    from recog.config import TrainConfig
    from recog.data import Dataset

__all__ = ["make_task", "Batch", "Classification", "MultiLabel", "Task", "report_markdown", "task_from_meta"]

TASKS: dict[str, type[Task]] = {"classification": Classification, "multilabel": MultiLabel}


def report_markdown(report: dict[str, Any]) -> str:
    """report.md for a report made by :meth:`Task.report` (it names its task)."""
    from recog.report import document

    return document(report, TASKS[report.get("task", Classification.name)]().markdown(report))


def task_from_meta(meta: dict[str, Any]) -> Task:
    """The task a weights file was trained for (its metadata names it; older files: classification)."""
    kind = meta.get("task", Classification.name)
    if kind not in TASKS:
        from recog.errors import WeightsError

        raise WeightsError(f"weights for an unknown task {kind!r} (known: {', '.join(TASKS)})")
    return TASKS[kind].from_meta(meta)


def make_task(ds: Dataset, cfg: TrainConfig, device: torch.device) -> Task:
    """Multi-label for multi-hot labels (a manifest with a ``labels`` column), else classification."""
    if ds.multilabel:
        if cfg.class_weights or cfg.balanced_sampling:
            raise ConfigError("class_weights and balanced_sampling are for single-label data; "
                              "multi-label data takes --pos-weight auto")
        weight = ds.pos_weight().to(device) if cfg.pos_weight == "auto" else None
        return MultiLabel(weight, cfg.label_smoothing)
    if cfg.pos_weight:
        raise ConfigError("pos_weight is for multi-label data (a manifest with a 'labels' column); "
                          "single-label data takes --class-weights auto")
    weights = ds.class_weights().to(device) if cfg.class_weights == "auto" else None
    return Classification(weights, cfg.label_smoothing)
