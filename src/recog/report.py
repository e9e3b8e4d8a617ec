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


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


FEW_IMAGES = 30  # under this, a report says how much one image moves its figures


def few_images(n: int) -> str:
    """A caution for a report made on few images (a few-shot folder's carved validation split)."""
    return f" — few images: each one moves accuracy by {100 / n:.0f} points" if 0 < n < FEW_IMAGES else ""


def header(report: dict[str, Any], figures: list[str]) -> list[str]:
    """The title, the image count and the task's headline figures, as a list of lines."""
    return [
        f"# Evaluation report{': ' + report['title'] if report.get('title') else ''}",
        "",
        f"- images: {report['num_images']}" + (f" ({report['split']} split)" if report.get("split") else "")
        + few_images(report["num_images"]),
        *(f"- {line}" for line in figures),
        f"- test-time augmentation: {'yes' if report.get('tta') else 'no'}",
        "",
    ]


def document(report: dict[str, Any], body: str) -> str:
    """report.md: the task's ``body`` (headline figures and per-class table), a fusion model's ablation
    table and links to the figures made for it."""
    figures = "".join(f"\n## {f['title']}\n\n![{f['title']}]({f['path']})\n" for f in report.get("figures", []))
    return body + _ablation_markdown(report.get("ablation")) + figures


def _ablation_markdown(rows: list[dict[str, Any]] | None) -> str:
    """A fusion model's ablation table: the headline metric with image only, text only and both."""
    if not rows:
        return ""
    lines = ["", "## Ablation (what the model is given)", "", f"| inputs | {rows[0]['metric']} | images |", "|---|---|---|"]
    lines += [f"| {r['inputs'].replace('+', ' + ')} | {pct(r['value'])} | {r['num_images']} |" for r in rows]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, report: dict[str, Any], markdown: str) -> None:
    """report.json, ``markdown`` as report.md, and (with a confusion matrix) confusion.csv and
    confusion.png in ``out_dir``."""
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2))
    atomic_write_text(out_dir / "report.md", markdown)
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
