"""Files of a run: metrics.csv, curves.png, report.json/.md, confusion.csv/.png (atomic writes)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from recog.fileio import atomic_path, atomic_write_text

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


def write_metrics_csv(path: Path, history: list[dict[str, Any]], extra: tuple[str, ...] = ()) -> None:
    """One row per epoch; ``extra`` are the task's own columns (e.g. ``val_map``), before ``lr``."""
    columns = [*METRIC_COLUMNS[:5], *extra, *METRIC_COLUMNS[5:]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(path: Path, history: list[dict[str, Any]]) -> None:
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "acc")):
        ax.plot(epochs, [r[f"train_{metric}"] for r in history], "o-", label="train")
        val = [r[f"val_{metric}"] for r in history]
        if not all(math.isnan(v) for v in val):
            ax.plot(epochs, val, "o-", label="val")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if metric == "acc" else "loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_confusion(path: Path, matrix: list[list[int]], classes: list[str]) -> None:
    import numpy as np

    plt = _pyplot()
    m = np.asarray(matrix)
    k = len(classes)
    side = min(20, max(5, 0.5 * k + 2))
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(m, cmap="Blues")
    if k <= 30:
        ax.set_xticks(range(k), classes, rotation=90)
        ax.set_yticks(range(k), classes)
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _header(report: dict[str, Any], figures: list[str]) -> list[str]:
    """The title, the image count and the task's headline figures, as a list of lines."""
    return [
        f"# Evaluation report{': ' + report['title'] if report.get('title') else ''}",
        "",
        f"- images: {report['num_images']}" + (f" ({report['split']} split)" if report.get("split") else ""),
        *(f"- {line}" for line in figures),
        f"- test-time augmentation: {'yes' if report.get('tta') else 'no'}",
        "",
    ]


def _multilabel_markdown(report: dict[str, Any]) -> str:
    lines = _header(report, [
        f"mAP: {report['map_macro']:.4f} (macro), {report['map_micro']:.4f} (micro)",
        f"exact match: {_pct(report['exact_match'])}, Hamming loss: {report['hamming_loss']:.4f}",
        f"macro F1: {report['macro_f1']:.4f}, micro F1: {report['micro_f1']:.4f}",
    ]) + ["| label | precision | recall | F1 | AP | support | threshold |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['class']} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | "
              f"{'n/a' if r['ap'] is None else format(r['ap'], '.4f')} | "
              f"{r['support']} | {r['threshold']:.3f} |" for r in report["per_class"]]
    return "\n".join(lines) + "\n"


def report_markdown(report: dict[str, Any]) -> str:
    """report.md: the headline figures, the per-class table and links to the figures made for it."""
    figures = "".join(f"\n## {f['title']}\n\n![{f['title']}]({f['path']})\n" for f in report.get("figures", []))
    return _report_markdown(report) + _ablation_markdown(report.get("ablation")) + figures


def _ablation_markdown(rows: list[dict[str, Any]] | None) -> str:
    """A fusion model's ablation table: the headline metric with image only, text only and both."""
    if not rows:
        return ""
    lines = ["", "## Ablation (what the model is given)", "", f"| inputs | {rows[0]['metric']} | images |", "|---|---|---|"]
    lines += [f"| {r['inputs'].replace('+', ' + ')} | {_pct(r['value'])} | {r['num_images']} |" for r in rows]
    return "\n".join(lines) + "\n"


def _report_markdown(report: dict[str, Any]) -> str:
    if report.get("task") == "multilabel":
        return _multilabel_markdown(report)
    lines = _header(report, [
        f"accuracy: {_pct(report['accuracy'])}",
        f"top-5 accuracy: {_pct(report['top5_accuracy'])}",
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


def write_report(out_dir: Path, report: dict[str, Any]) -> None:
    """report.json, report.md and (single-label) confusion.csv and confusion.png in ``out_dir``."""
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2))
    atomic_write_text(out_dir / "report.md", report_markdown(report))
    if "confusion_matrix" not in report:
        return
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["true \\ predicted", *report["classes"]])
    for name, row in zip(report["classes"], report["confusion_matrix"]):
        writer.writerow([name, *row])
    atomic_write_text(out_dir / "confusion.csv", buf.getvalue())
    plot_confusion(out_dir / "confusion.png", report["confusion_matrix"], report["classes"])


def write_skipped(path: Path, skipped: list[tuple[str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "reason"])
    writer.writerows(sorted(skipped))
    atomic_write_text(path, buf.getvalue())
