"""Single-label classification: one class per image, softmax and cross-entropy; accuracy, top-5,
per-class precision/recall/F1 and the confusion matrix."""

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
        # a class a sure model gives less than fp32's smallest normal number underflows to 0: its log
        # is that number's (-87.3), not -inf, which the output check would take for broken weights
        return probabilities.clamp_min(torch.finfo(torch.float32).tiny).log()

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
    """Accuracy, top-5, per-class precision/recall/F1 with macro and weighted means, confusion matrix.

    Every figure is read off the confusion matrix (a ``bincount``), with scikit-learn's conventions
    (tests/test_evaluate.py checks them against it): a ratio with a zero denominator is 0, and the macro
    mean is over the classes that occur in the labels or the predictions. Written here rather than taken
    from torchmetrics, whose package import (every domain's metrics, and transformers where it is
    installed) cost 3.3 s of each ``recog train`` and ``recog eval`` for a dozen lines of arithmetic."""
    k = len(classes)
    preds = logits.argmax(1)
    labels = labels.long()
    confusion = torch.bincount(labels * k + preds, minlength=k * k).view(k, k)
    tp = confusion.diagonal().double()
    support = confusion.sum(1).double()  # true images per class
    predicted = confusion.sum(0).double()

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))

    per = {"precision": ratio(tp, predicted), "recall": ratio(tp, support), "f1": ratio(2 * tp, support + predicted)}
    present = (support + predicted) > 0
    weights = support / support.sum().clamp(min=1)
    macro = {name: values[present].mean().item() if present.any() else 0.0 for name, values in per.items()}
    weighted = {name: (values * weights).sum().item() for name, values in per.items()}
    rows = {name: values.tolist() for name, values in per.items()}
    off = confusion.clone().fill_diagonal_(0)
    pairs = [
        {"true": classes[int(i) // k], "predicted": classes[int(i) % k], "count": int(off.view(-1)[i])}
        for i in off.view(-1).argsort(descending=True)[:10]
        if off.view(-1)[i] > 0
    ]
    top5 = None
    if k >= 10:
        top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1).double().mean().item()
    return {
        "accuracy": (tp.sum() / max(len(labels), 1)).item(),
        "top5_accuracy": top5,
        **{f"macro_{name}": value for name, value in macro.items()},
        **{f"weighted_{name}": value for name, value in weighted.items()},
        "per_class": [
            {"class": c, **{name: rows[name][i] for name in per}, "support": int(support[i])}
            for i, c in enumerate(classes)
        ],
        "confusion_matrix": confusion.tolist(),
        "most_confused": pairs,
        "num_images": int(len(labels)),
        "classes": list(classes),
    }
