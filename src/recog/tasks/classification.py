"""Single-label classification: one class per image, softmax and cross-entropy; accuracy, top-5,
per-class precision/recall/F1 and the confusion matrix (torchmetrics)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recog.report import header, pct
from recog.tasks.base import Task


class Classification(Task):
    name = "classification"
    score = "val_acc"
    decision = "top-k"  # the answer: the k most probable classes (softmax)

    def __init__(self, class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        self.criterion = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion(outputs.float(), targets)

    def hits(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        return (outputs.argmax(1) == targets).sum(), len(targets)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(1)

    def logits_of(self, probabilities: torch.Tensor) -> torch.Tensor:
        return probabilities.log()

    def confidence(self, probabilities: torch.Tensor) -> torch.Tensor:
        return probabilities.max(1).values  # the top class's probability

    def validate(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[dict[str, float], dict[str, Any]]:
        return {"val_loss": F.cross_entropy(logits, targets).item(),
                "val_acc": (logits.argmax(1) == targets).float().mean().item()}, {}

    def report(self, logits: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict[str, Any]:
        return {"task": self.name, **classification_report(logits, targets, classes)}

    def predict(self, logits: torch.Tensor, classes: list[str], top_k: int = 5) -> list[dict[str, Any]]:
        probs = self.probabilities(logits).cpu()
        values, index = probs.topk(min(top_k, probs.shape[1]), dim=1)
        return [{"top": [{"class": classes[int(i)], "prob": float(p)} for p, i in zip(vs, ix)]}
                for vs, ix in zip(values, index)]

    def prediction_rows(self, logits: torch.Tensor, targets: torch.Tensor,
                        classes: list[str]) -> list[tuple[str, str, float]]:
        prob, index = self.probabilities(logits).max(1)
        return [(classes[int(t)], classes[int(i)], float(p)) for t, i, p in zip(targets, index, prob)]

    def headline(self, report: dict[str, Any]) -> tuple[str, float]:
        return "accuracy", report["accuracy"]

    def summary(self, report: dict[str, Any]) -> str:
        top5 = f", top-5 {report['top5_accuracy']:.4f}" if report["top5_accuracy"] is not None else ""
        return f"{report['split']} accuracy {report['accuracy']:.4f}{top5} on {report['num_images']} images"

    def markdown(self, report: dict[str, Any]) -> str:
        lines = header(report, [
            f"accuracy: {pct(report['accuracy'])}",
            f"top-5 accuracy: {pct(report['top5_accuracy'])}",
            f"macro F1: {report['macro_f1']:.4f}, weighted F1: {report['weighted_f1']:.4f}",
        ]) + ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        lines += [f"| {r['class']} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['support']} |"
                  for r in report["per_class"]]
        lines.append(f"| *macro* | {report['macro_precision']:.4f} | {report['macro_recall']:.4f} | "
                     f"{report['macro_f1']:.4f} | {report['num_images']} |")
        lines.append(f"| *weighted* | {report['weighted_precision']:.4f} | {report['weighted_recall']:.4f} | "
                     f"{report['weighted_f1']:.4f} | {report['num_images']} |")
        if report["most_confused"]:
            lines += ["", "## Most confused pairs", "", "| true | predicted | count |", "|---|---|---|"]
            lines += [f"| {p['true']} | {p['predicted']} | {p['count']} |" for p in report["most_confused"]]
        return "\n".join(lines) + "\n"


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
