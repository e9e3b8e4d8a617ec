"""A run folder, the one home of a finished (or running) run: its file names, its weights file, its
resolved config, the metadata its weights carry, and the data it was trained on, split as it was.

Training writes a run through these names; evaluation, export, explanations and serving read it
through them and never import the training engine.

    runs/train-3/
      config.yaml          the resolved config (every planned value), written once before training
      weights/best.safetensors, last.safetensors   weights + metadata (classes, preprocessing, task)
      weights/state.pt     the loop, optimizer, scheduler and RNG state (``--resume``)
      metrics.csv  curves.png  report.md  report.json  predictions.csv  skipped.csv
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recog._version import __version__
from recog.config import TrainConfig, is_fusion, make_config
from recog.errors import WeightsError

if TYPE_CHECKING:
    from torch import nn

    from recog.data import Dataset
    from recog.tasks import Task

CONFIG = "config.yaml"
WEIGHTS = "weights"
BEST = "best.safetensors"
LAST = "last.safetensors"
STATE = "state.pt"
METRICS = "metrics.csv"
CURVES = "curves.png"  # the last file a finished run writes
PREDICTIONS = "predictions.csv"
SKIPPED = "skipped.csv"
REPORT_JSON = "report.json"


@dataclass
class Run:
    """A finished (or early-stopped) training run."""

    path: Path
    config: TrainConfig  # the resolved record of the run (its config.yaml)
    metrics: list[dict[str, Any]]
    model: nn.Module
    classes: list[str]
    report: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None  # the optimizer steps the run planned at its end (a time budget re-plans them)

    @property
    def best_weights(self) -> Path:
        return self.path / WEIGHTS / BEST


def weights_file(source: str | os.PathLike) -> tuple[Path, Path | None]:
    """(weights file, run folder or None) for a run folder or a weights file."""
    path = Path(source).expanduser()
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / WEIGHTS / name).is_file():
                return path / WEIGHTS / name, path
        raise WeightsError(f"{path} is not a run folder: no {WEIGHTS}/{BEST} in it")
    if not path.exists():
        raise WeightsError(f"no run folder or weights file at {path}")
    return path, None


def check_meta(meta: Any, where: Any, normalisation: bool = True) -> dict[str, Any]:
    """recog's metadata of a weights or ONNX file, checked before it is used: classes (unique names),
    channels, image size and (``normalisation``) one finite mean and positive std per channel."""
    def bad(what: str) -> WeightsError:
        return WeightsError(f"{where}: its metadata is broken: {what}")

    if not isinstance(meta, dict):
        raise bad("not a mapping")
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise bad(f"classes must be a list of names, got {str(classes)[:80]}")
    if len(set(classes)) != len(classes):
        raise bad(f"class names repeat ({', '.join(sorted({c for c in classes if classes.count(c) > 1})[:4])})")
    if meta.get("channels") not in (1, 3):
        raise bad(f"channels must be 1 or 3, got {str(meta.get('channels'))[:40]}")
    size = meta.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 4 <= size <= 8192:
        raise bad(f"image_size must be a whole number from 4 to 8192, got {str(size)[:40]}")
    if normalisation:
        for key in ("mean", "std"):
            values = meta.get(key)
            if not isinstance(values, list) or len(values) != meta["channels"] or not all(
                    isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise bad(f"{key} must be {meta['channels']} finite numbers (one per channel), got {str(values)[:80]}")
        if any(v <= 0 for v in meta["std"]):
            raise bad(f"std must be positive, got {meta['std']}")
    return meta


def run_config(run_dir: Path, **overrides: Any) -> TrainConfig:
    """The resolved config a run recorded (its ``config.yaml``)."""
    return make_config(run_dir / CONFIG, **{"verbose": False, **overrides})


def data_options(cfg: TrainConfig, device: Any) -> dict[str, Any]:
    """The config's options for path sources (image folders, manifests)."""
    return dict(loader=cfg.loader, memory_fraction=cfg.memory_fraction, cache=cfg.cache,
                max_image_pixels=cfg.max_image_pixels, allow_empty_classes=cfg.allow_empty_classes,
                device=str(device), without_test=cfg.final_eval != "auto")


def run_data(cfg: TrainConfig, image_size: int | None, channels: int | None, device: Any,
             stream: bool = False) -> Dataset:
    """The data a run was trained on, split as it was. ``stream``: image folders are scanned, not
    decoded (for a caller that reads a few of the images itself)."""
    from recog.data import load_dataset

    options = data_options(cfg, device)
    if stream:
        options.update(loader="stream", cache=False)
    return load_dataset(cfg.data, cfg.data_root, cfg.val_fraction, cfg.split_seed, image_size, channels, **options)


def weights_meta(cfg: TrainConfig, ds: Dataset, task: Task) -> dict[str, Any]:
    """What travels with the weights: enough to rebuild the model, read an image the same way and
    answer as the run's own evaluation did (its precision and test-time augmentation)."""
    encoder = None
    if cfg.head == "text" or is_fusion(cfg.model):
        from recog.text import encoder_id

        encoder = encoder_id(cfg.text_encoder)
    return {
        "model": cfg.model,
        "model_args": cfg.model_args,
        **task.meta(),
        "classes": ds.classes,
        "channels": ds.channels,
        "image_size": ds.image_size,
        "mean": cfg.mean,
        "std": cfg.std,
        "resize": "shorter-side, centre-crop",
        "flip": cfg.flip,
        "translate": cfg.translate,
        "tta_translate": cfg.tta_translate,
        **({"tta_confidence": cfg.tta_confidence} if cfg.tta_confidence is not None else {}),
        "tta": bool(cfg.tta),
        "precision": cfg.precision,
        "data": cfg.data,
        **({"head": "text", "prompt": cfg.prompt, "text_encoder": encoder} if cfg.head == "text" else {}),
        **({"inputs": ["image", "text"], "text_encoder": encoder} if is_fusion(cfg.model) else {}),
        **({"pretrained": pretrained_record(cfg.pretrained), "transfer": cfg.transfer} if cfg.pretrained else {}),
        "recog_version": __version__,
    }


def pretrained_record(spec: str) -> dict[str, Any]:
    """What the weights say of the pretrained weights they started from: name, licence, source and
    preprocessing for a registered source; the file for a user's checkpoint."""
    from recog.models.pretrained import SOURCES

    return SOURCES[spec].preprocessing() if spec in SOURCES else {"path": str(Path(spec).expanduser().resolve())}
