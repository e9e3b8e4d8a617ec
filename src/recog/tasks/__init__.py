"""Tasks: what a batch means. A task owns the targets, the loss, the logits -> predictions rule and
the metrics; the training loop, evaluation, test-time augmentation and prediction go through it.

- :class:`Classification`: one class per image (softmax, cross-entropy);
- :class:`MultiLabel`: any number of labels per image (sigmoid, binary cross-entropy, a decision
  threshold per label tuned on the validation split and saved with the weights).
"""

from __future__ import annotations

from typing import Any

from recog.tasks.base import Batch, Task
from recog.tasks.classification import Classification
from recog.tasks.multilabel import MultiLabel

__all__ = ["Batch", "Classification", "MultiLabel", "Task", "task_from_meta"]

TASKS: dict[str, type[Task]] = {"classification": Classification, "multilabel": MultiLabel}


def task_from_meta(meta: dict[str, Any]) -> Task:
    """The task a weights file was trained for (its metadata names it; older files: classification)."""
    kind = meta.get("task", "classification")
    if kind not in TASKS:
        from recog.errors import WeightsError

        raise WeightsError(f"weights for an unknown task {kind!r} (known: {', '.join(TASKS)})")
    return TASKS[kind].from_meta(meta)
