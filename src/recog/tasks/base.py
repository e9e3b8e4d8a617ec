"""The seam between the loop and what is learned: a :class:`Task`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# A batch as the loaders yield it: (images, targets, ...). Tasks with more inputs (text) add entries.
Batch = tuple[torch.Tensor, ...]


class Task:
    """What a batch means. Subclasses define the loss, the probabilities and the metrics."""

    name = "task"
    decision = "top-k"  # how an answer is read from the probabilities: "top-k" or "thresholds"
    score = "val_acc"  # the validation metric that picks the best epoch (higher is better)
    columns: tuple[str, ...] = ()  # metrics.csv columns beyond epoch/train_loss/train_acc/val_loss/val_acc/lr

    # ---- training -------------------------------------------------------------------------
    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The model's outputs for a batch: the images are its first entry, the targets the second;
        entries after them (a fusion model's text embeddings) are the model's further inputs."""
        return model(batch[0], *batch[2:])

    def targets(self, batch: Batch) -> torch.Tensor:
        return batch[1]

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def hits(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(correct decisions, decisions) in a training batch, for the running train accuracy; kept on
        the device (no sync per step)."""
        raise NotImplementedError

    # ---- from logits ----------------------------------------------------------------------
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def confidence(self, probabilities: torch.Tensor) -> torch.Tensor:
        """How sure the answer read from each row of ``probabilities`` is, in [0, 1] (selective TTA)."""
        raise NotImplementedError

    def logits_of(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`probabilities`, up to what the metrics need: test-time augmentation
        averages probabilities and hands back logits."""
        raise NotImplementedError

    def validate(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[dict[str, float], dict[str, Any]]:
        """(metrics row entries ``val_loss``, ``val_acc``…, what the weights of this epoch carry
        besides, e.g. decision thresholds)."""
        raise NotImplementedError

    def report(self, logits: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def predict(self, logits: torch.Tensor, classes: list[str], top_k: int = 5) -> list[dict[str, Any]]:
        """Per image what ``recog predict`` prints: ``{"top": [...]}`` or ``{"labels": [...]}``."""
        raise NotImplementedError

    def prediction_rows(self, logits: torch.Tensor, targets: torch.Tensor,
                        classes: list[str]) -> list[tuple[str, str, float]]:
        """Per image: (true, predicted, probability) for ``predictions.csv``."""
        raise NotImplementedError

    def headline(self, report: dict[str, Any]) -> tuple[str, float]:
        """(name, value) of the report's one headline metric (the ablation table's, a tuning trial's score)."""
        raise NotImplementedError

    def summary(self, report: dict[str, Any]) -> str:
        """The report in one line, as ``recog train`` and ``recog eval`` end."""
        raise NotImplementedError

    def markdown(self, report: dict[str, Any]) -> str:
        """report.md's headline figures and per-class table."""
        raise NotImplementedError

    def meta(self) -> dict[str, Any]:
        """What the weights carry so that :meth:`from_meta` rebuilds this task for prediction, and
        ``decision``: the rule an exported file's predictor applies to the probabilities."""
        return {"task": self.name, "decision": self.decision}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Task:
        return cls()
