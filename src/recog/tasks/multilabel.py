"""Multi-label classification: any number of labels per image (targets are multi-hot rows).

One sigmoid per label and binary cross-entropy (``pos_weight`` for rare labels). A label is
predicted when its probability reaches its own decision threshold, tuned on the validation split
for the best F1 of that label and saved with the weights (0.5 without a validation split).
Metrics come from torchmetrics' multilabel functions: mAP (macro and micro), per-label
precision/recall/F1/AP/support, exact-match ratio, Hamming loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recog.report import header, pct
from recog.tasks.base import Task


def tune_thresholds(probs: torch.Tensor, targets: torch.Tensor, default: float = 0.5) -> list[float]:
    """Per label, the threshold with the best F1 on (probs, targets): midway between the lowest
    probability it still predicts and the next one down. Labels with no positive get ``default``."""
    thresholds = []
    for p, t in zip(probs.T.float(), targets.T.float()):
        positives = t.sum()
        if positives == 0:
            thresholds.append(default)
            continue
        p_sorted, order = p.sort(descending=True)
        tp = t[order].cumsum(0)
        predicted = torch.arange(1, len(p) + 1, dtype=torch.float32)
        f1 = 2 * tp / (predicted + positives)  # predicting the k most probable as positive
        k = int(f1.argmax())
        low = p_sorted[k + 1] if k + 1 < len(p) else torch.tensor(0.0)
        thresholds.append(float((p_sorted[k] + low) / 2))
    return thresholds


def average_precision(probs: torch.Tensor, truth: torch.Tensor) -> tuple[list[float | None], float, float]:
    """(per-label AP, macro mAP, micro mAP) with torchmetrics. A label with no positive in ``truth``
    has no AP (None) and is left out of the macro mean, as it would otherwise count as a perfect 1."""
    from torchmetrics.functional.classification import multilabel_average_precision

    present = truth.sum(0) > 0
    if not present.any():
        return [None] * truth.shape[1], float("nan"), float("nan")
    n = int(present.sum())
    per = multilabel_average_precision(probs[:, present], truth[:, present], n, average="none").reshape(-1).tolist()
    values = iter(per)
    ap = [next(values) if p else None for p in present.tolist()]
    micro = multilabel_average_precision(probs[:, present], truth[:, present], n, average="micro").item()
    return ap, sum(per) / n, micro


def decide(probs: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    """Which labels each image gets: probability at or over the label's threshold."""
    return probs >= torch.tensor(thresholds, dtype=probs.dtype, device=probs.device)


class MultiLabel(Task):
    name = "multilabel"
    score = "val_map"
    decision = "thresholds"  # the answer: every label whose sigmoid reaches its threshold
    columns = ("val_map",)

    def __init__(self, pos_weight: torch.Tensor | None = None, label_smoothing: float = 0.0,
                 thresholds: Sequence[float] | None = None) -> None:
        self.criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        self.label_smoothing = label_smoothing
        self.thresholds = list(thresholds) if thresholds is not None else None

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.label_smoothing:
            targets = targets * (1 - self.label_smoothing) + self.label_smoothing / 2
        return self.criterion(outputs.float(), targets)

    def hits(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        return ((outputs > 0) == (targets > 0.5)).sum(), targets.numel()  # per label, at 0.5

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()

    def logits_of(self, probabilities: torch.Tensor) -> torch.Tensor:
        return torch.logit(probabilities, eps=1e-7)

    def confidence(self, probabilities: torch.Tensor) -> torch.Tensor:
        # the least decided label: each label's probability of its own answer (yes or no), the lowest
        return torch.maximum(probabilities, 1 - probabilities).min(1).values

    def cuts(self, labels: int) -> list[float]:
        """The decision threshold of each label (0.5 until tuned)."""
        return self.thresholds or [0.5] * labels

    def decisions(self, probs: torch.Tensor) -> torch.Tensor:
        return decide(probs, self.cuts(probs.shape[1]))

    def validate(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[dict[str, float], dict[str, Any]]:
        probs = self.probabilities(logits)
        thresholds = tune_thresholds(probs, targets)
        hits = decide(probs, thresholds) == (targets > 0.5)
        return {"val_loss": F.binary_cross_entropy_with_logits(logits.float(), targets).item(),
                "val_acc": hits.float().mean().item(),  # per-label accuracy at the tuned thresholds
                "val_map": average_precision(probs, targets.long())[1]}, {"thresholds": thresholds}

    def report(self, logits: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict[str, Any]:
        from torchmetrics.functional.classification import (
            multilabel_exact_match,
            multilabel_f1_score,
            multilabel_hamming_distance,
            multilabel_precision,
            multilabel_recall,
        )

        k = len(classes)
        probs, truth = self.probabilities(logits), targets.long()
        decided = self.decisions(probs).float()  # 0/1: torchmetrics' 0.5 threshold keeps them as they are
        precision = multilabel_precision(decided, truth, k, average="none").tolist()
        recall = multilabel_recall(decided, truth, k, average="none").tolist()
        f1 = multilabel_f1_score(decided, truth, k, average="none").tolist()
        ap, map_macro, map_micro = average_precision(probs, truth)
        cuts = self.cuts(k)
        support = truth.sum(0).tolist()
        return {
            "task": self.name,
            "map_macro": map_macro,  # over the labels present in the split
            "map_micro": map_micro,
            "exact_match": multilabel_exact_match(decided, truth, k).item(),
            "hamming_loss": multilabel_hamming_distance(decided, truth, k, average="micro").item(),
            "macro_precision": multilabel_precision(decided, truth, k, average="macro").item(),
            "macro_recall": multilabel_recall(decided, truth, k, average="macro").item(),
            "macro_f1": multilabel_f1_score(decided, truth, k, average="macro").item(),
            "micro_f1": multilabel_f1_score(decided, truth, k, average="micro").item(),
            "per_class": [
                {"class": c, "precision": precision[i], "recall": recall[i], "f1": f1[i],
                 "ap": ap[i], "support": int(support[i]), "threshold": cuts[i]}
                for i, c in enumerate(classes)
            ],
            "label_frequency": (truth.float().mean(0)).tolist(),
            "num_images": int(len(truth)),
            "classes": list(classes),
        }

    def predict(self, logits: torch.Tensor, classes: list[str], top_k: int = 5) -> list[dict[str, Any]]:
        probs = self.probabilities(logits).cpu()
        chosen = self.decisions(probs)
        results = []
        for p, keep in zip(probs, chosen):
            index = [int(i) for i in keep.nonzero().flatten()]
            results.append({"labels": sorted(({"class": classes[i], "prob": float(p[i])} for i in index),
                                             key=lambda e: -e["prob"])})
        return results

    def prediction_rows(self, logits: torch.Tensor, targets: torch.Tensor,
                        classes: list[str]) -> list[tuple[str, str, float]]:
        probs = self.probabilities(logits)
        chosen = self.decisions(probs)
        rows = []
        for p, keep, t in zip(probs, chosen, targets):
            true = ";".join(classes[int(i)] for i in (t > 0.5).nonzero().flatten())
            predicted = ";".join(classes[int(i)] for i in keep.nonzero().flatten())
            rows.append((true, predicted, float(p[keep].max()) if keep.any() else 0.0))  # the surest label
        return rows

    def headline(self, report: dict[str, Any]) -> tuple[str, float]:
        return "map_macro", report["map_macro"]

    def summary(self, report: dict[str, Any]) -> str:
        return (f"{report['split']} mAP {report['map_macro']:.4f} (micro {report['map_micro']:.4f}), exact match "
                f"{report['exact_match']:.4f} on {report['num_images']} images")

    def markdown(self, report: dict[str, Any]) -> str:
        lines = header(report, [
            f"mAP: {report['map_macro']:.4f} (macro), {report['map_micro']:.4f} (micro)",
            f"exact match: {pct(report['exact_match'])}, Hamming loss: {report['hamming_loss']:.4f}",
            f"macro F1: {report['macro_f1']:.4f}, micro F1: {report['micro_f1']:.4f}",
        ]) + ["| label | precision | recall | F1 | AP | support | threshold |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['class']} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | "
                  f"{'n/a' if r['ap'] is None else format(r['ap'], '.4f')} | "
                  f"{r['support']} | {r['threshold']:.3f} |" for r in report["per_class"]]
        return "\n".join(lines) + "\n"

    def meta(self) -> dict[str, Any]:
        return {"task": self.name, "decision": self.decision, "thresholds": self.thresholds}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> MultiLabel:
        return cls(thresholds=meta.get("thresholds"))
