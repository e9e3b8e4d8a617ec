"""The Python API: ``train``, ``evaluate``, ``predict``, ``load``; the CLI is a thin layer over it."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from recog import __version__
from recog.config import TrainConfig, make_config, parse_duration, save_yaml
from recog.data import BatchAugment, Normalize, channel_stats, load_dataset, load_image
from recog.data.datasets import AnySplit, Dataset
from recog.data.stream import SamplePolicy, make_loader
from recog.data.image import ImageReadError, is_image_file
from recog.engine.checkpoint import load_into, load_state, read_weights
from recog.engine.distributed import is_main
from recog.engine.memory import reuse_freed_memory
from recog.engine.optim import Lookahead, make_optimizer
from recog.engine.trainer import EpochHook, Hooks, LoopState, restore_state, seed_everything, train_loop
from recog.errors import ConfigError, DataError, WeightsError
from recog.metrics import classification_report, predict_logits, tta_views
from recog.fileio import next_run_dir
from recog.models import create_model, list_models
from recog.report import plot_curves, write_metrics_csv, write_report, write_skipped

__all__ = ["Classifier", "Run", "create_model", "evaluate", "list_models", "load", "predict", "train"]

DEFAULT_LR = {"sgd": 0.05, "adamw": 1e-3, "muon": 0.05}

if TYPE_CHECKING:
    from recog.engine.budget import BudgetPlan  # imported lazily where used


@dataclass
class Run:
    """A finished (or early-stopped) training run."""

    path: Path
    config: TrainConfig
    metrics: list[dict[str, Any]]
    model: nn.Module
    classes: list[str]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def best_weights(self) -> Path:
        return self.path / "weights" / "best.safetensors"


@dataclass
class Classifier:
    """A model with what it needs to read images: classes, channels, size, mean/std."""

    model: nn.Module
    meta: dict[str, Any]
    device: torch.device
    source: Path | None = None
    config: TrainConfig | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def normalize(self) -> Normalize:
        return Normalize(self.meta["mean"], self.meta["std"], self.device)

    def predict_images(self, images_u8: torch.Tensor, top_k: int = 5) -> list[list[dict[str, Any]]]:
        """Top-k ``{class, prob}`` for a uint8 batch (N, C, H, W) already at the model's size."""
        self.model.eval()
        with torch.no_grad():
            probs = self.model(self.normalize(images_u8.to(self.device))).float().softmax(1).cpu()
        k = min(top_k, probs.shape[1])
        values, index = probs.topk(k, dim=1)
        return [
            [{"class": self.classes[int(i)], "prob": float(p)} for p, i in zip(vs, ix)]
            for vs, ix in zip(values, index)
        ]


# ----------------------------------------------------------------------------------------------
# helpers


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """Deterministic kernels for the duration of a run; the previous setting is restored after."""
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    cudnn_before = torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
        torch.backends.cudnn.benchmark = cudnn_before


def _weights_file(source: str | os.PathLike) -> tuple[Path, Path | None]:
    """(weights file, run folder or None) for a run folder or a weights file."""
    path = Path(source).expanduser()
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / "weights" / name).is_file():
                return path / "weights" / name, path
        raise WeightsError(f"{path} is not a run folder: no weights/best.safetensors in it")
    if not path.exists():
        raise WeightsError(f"no run folder or weights file at {path}")
    return path, None


def _eval_on(
    clf: Classifier, split: AnySplit, split_name: str, precision: str, tta: bool, batch_size: int = 256,
    workers: int | None = None, tta_translate: bool = True,
) -> dict[str, Any]:
    started = time.perf_counter()
    loader = make_loader(split, clf.meta["channels"], clf.meta["image_size"], batch_size, clf.normalize,
                         clf.device, workers=workers)
    views = tta_views(bool(clf.meta.get("flip")), int(clf.meta.get("translate", 0)), tta_translate) if tta else None
    if tta and len(views) == 1 and is_main():
        print("note: --tta has no views for this model (trained without flip or translate); plain evaluation",
              file=sys.stderr)
    logits, labels = predict_logits(clf.model, loader, clf.device, precision, views)
    report = classification_report(logits, labels, clf.classes)
    report.update(split=split_name, tta=bool(tta and views and len(views) > 1),
                  seconds=round(time.perf_counter() - started, 2))
    return report


# ----------------------------------------------------------------------------------------------
# train


def train(
    config: str | os.PathLike | None = None,
    *,
    resume: str | os.PathLike | None = None,
    on_epoch_end: EpochHook | None = None,
    **overrides: Any,
) -> Run:
    """Train a classifier. Keyword arguments are the config keys (``data``, ``model``, ``epochs``…);
    ``config`` is a YAML file of them. ``resume`` continues a run folder from its last epoch.
    ``on_epoch_end(row)`` is called with each epoch's metrics; returning True stops training."""
    saved_state = None
    if resume is not None:
        run_dir = Path(resume).expanduser()
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"cannot resume {run_dir}: no config.yaml there (is it a run folder?)")
        changed = {k for k, v in overrides.items() if v is not None and k != "verbose"}
        if config is not None or changed:
            raise ConfigError(f"cannot change {', '.join(sorted(changed)) or 'the config'} when resuming; "
                              f"the run continues with its saved config.yaml")
        cfg = make_config(run_dir / "config.yaml", verbose=overrides.get("verbose"))
        saved_state = load_state(run_dir / "weights" / "state.pt")
        if saved_state["loop"]["epoch"] >= cfg.epochs or saved_state["loop"]["stopped_early"]:
            raise ConfigError(f"{run_dir} already finished ({saved_state['loop']['epoch']} of {cfg.epochs} epochs)")
    else:
        cfg = make_config(config, **overrides)
        run_dir = None
    if cfg.lr is None:
        cfg.lr = DEFAULT_LR[cfg.optimizer]
    device = resolve_device(cfg.device)
    cfg.precision = _resolve_precision(cfg.precision, device, cfg.verbose)

    with deterministic_mode(cfg.deterministic), reuse_freed_memory(cfg.reuse_memory and device.type == "cpu"):
        # ---- data ------------------------------------------------------------------------
        ds = _dataset(cfg, cfg.data, cfg.data_root, cfg.val_fraction, cfg.split_seed, cfg.image_size,
                      cfg.channels, str(device))
        if cfg.mean is None:
            cfg.mean, cfg.std = _measure_stats(ds)
        if cfg.verbose and is_main():
            print(ds.summary(), file=sys.stderr)
            for note in ds.notes:
                print(f"note: {note}", file=sys.stderr)
        imbalance = ds.imbalance()
        if imbalance and is_main() and cfg.class_weights is None and not cfg.balanced_sampling:
            big, small, ratio = imbalance
            print(f"warning: class imbalance: {ds.classes[big]!r} has {ratio:.1f}x the training images of "
                  f"{ds.classes[small]!r}; consider --class-weights auto or --balanced-sampling", file=sys.stderr)

        # ---- model and optimizer ---------------------------------------------------------
        setup_started = time.perf_counter()
        seed_everything(cfg.seed)
        model = create_model(cfg.model, len(ds.classes), ds.channels, ds.image_size, **cfg.model_args)
        if cfg.weights and saved_state is None:
            state, _ = read_weights(cfg.weights)
            left_out = load_into(model, state, cfg.weights, strict=False)
            if left_out and cfg.verbose:
                print(f"note: {len(left_out)} tensors not taken from {cfg.weights} (new or other shape): "
                      f"{', '.join(left_out[:4])}{' …' if len(left_out) > 4 else ''}", file=sys.stderr)
        if cfg.freeze_stem_epochs is not None and not hasattr(model, "freeze_stem"):
            raise ConfigError(f"freeze_stem_epochs: model {cfg.model!r} has no stem to freeze (airnet has)")
        model.to(device)
        if hasattr(model, "data_init") and saved_state is None and not cfg.weights:
            model.data_init(_init_sample(ds, cfg, device))  # e.g. airnet's patch-whitening stem
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.nesterov,
                                   cfg.bias_lr_scale, cfg.muon_lr, cfg.muon_momentum)
        lookahead = Lookahead(model) if cfg.lookahead else None
        loop = restore_state(saved_state, model, optimizer, lookahead) if saved_state else LoopState()

        normalize = Normalize(cfg.mean, cfg.std, device)
        augment = BatchAugment(cfg.flip, cfg.translate, cfg.cutout, cfg.alternating_flip, cfg.random_resized_crop,
                               cfg.crop_scale, cfg.random_erasing)
        policy = SamplePolicy(cfg.random_resized_crop, cfg.crop_scale, cfg.auto_augment, cfg.color_jitter)
        force_stream = cfg.loader == "stream"
        common = dict(channels_last=cfg.channels_last, workers=cfg.workers, force_stream=force_stream)
        train_loader = make_loader(
            ds.train, ds.channels, ds.image_size, cfg.batch_size, normalize, device, train=True, augment=augment,
            policy=policy, seed=cfg.seed, sample_weights=_sample_weights(ds) if cfg.balanced_sampling else None,
            **common)
        val_loader = (make_loader(ds.val, ds.channels, ds.image_size, max(256, cfg.batch_size), normalize, device,
                                  **common) if ds.val is not None and len(ds.val) else None)
        loss_weights = _class_weights(ds).to(device) if cfg.class_weights == "auto" else None
        net = torch.compile(model) if cfg.compile else model
        if cfg.steps and not cfg.time_budget:
            cfg.epochs = -(-cfg.steps // len(train_loader))  # the epochs those steps need
        deadline = None
        if cfg.time_budget and saved_state is None:
            budget_plan = _plan_budget(cfg, ds, net, model, optimizer, train_loader, normalize, device, loss_weights,
                                       setup_started)
            cfg.steps, cfg.epochs = budget_plan.steps, budget_plan.epochs
            deadline = setup_started + parse_duration(cfg.time_budget) - budget_plan.final_eval_s - budget_plan.margin_s

        # ---- run folder ------------------------------------------------------------------
        if run_dir is None:
            run_dir = next_run_dir(cfg.project, cfg.name) if is_main() else Path(cfg.project) / "_rank"
        if is_main():
            save_yaml(cfg, run_dir / "config.yaml")
            if ds.skipped:
                write_skipped(run_dir / "skipped.csv", ds.skipped)
        meta = weights_meta(cfg, ds)
        replan = None if deadline is None else functools.partial(_replan, cfg, deadline, len(train_loader), run_dir)
        writer = _tensorboard(run_dir) if cfg.tensorboard and is_main() else None

        # ---- train -----------------------------------------------------------------------
        try:
            hooks = Hooks(lambda h: write_metrics_csv(run_dir / "metrics.csv", h), writer, replan, on_epoch_end)
            loop = train_loop(net, model, optimizer, train_loader, val_loader, cfg, device, run_dir, meta, loop,
                              hooks, loss_weights, lookahead)
        except KeyboardInterrupt:
            if is_main():
                print(f"\ninterrupted; continue with: recog train --resume {run_dir}", file=sys.stderr)
            raise
        finally:
            if writer is not None:
                writer.close()
            late = [s for loader in (train_loader, val_loader) for s in getattr(loader, "skipped", [])]
            if late and is_main():  # files that vanished or broke after the scan (streaming loader)
                write_skipped(run_dir / "skipped.csv", sorted(set(ds.skipped) | set(late)))

        # ---- final evaluation with the best weights --------------------------------------
        best = run_dir / "weights" / "best.safetensors"
        if best.is_file():
            state, _ = read_weights(best)
            load_into(model, state, str(best))
        clf = Classifier(model, meta, device, best, cfg)
        report: dict[str, Any] = {}
        if ds.eval_split is not None:
            split_name, split = ds.eval_split
            report = _eval_on(clf, split, split_name, cfg.precision, cfg.tta, workers=cfg.workers,
                              tta_translate=cfg.tta_translate)
            report["title"] = f"{run_dir.name} ({cfg.model} on {cfg.data})"
        if is_main():
            if report:
                write_report(run_dir, report)
            plot_curves(run_dir / "curves.png", loop.history)
        if cfg.verbose and is_main():
            if report:
                top5 = f", top-5 {report['top5_accuracy']:.4f}" if report["top5_accuracy"] is not None else ""
                print(f"{split_name} accuracy {report['accuracy']:.4f}{top5} on {report['num_images']} images "
                      f"(best epoch {loop.best_epoch})")
            else:
                print("no test or val split: no final report (give the folder a test/ split or --val-fraction)")
            if cfg.time_budget:
                from recog.engine.budget import format_duration

                print(f"training and evaluation took {format_duration(time.perf_counter() - setup_started)} "
                      f"of the {cfg.time_budget} budget")
            print(f"run folder: {run_dir}")
    return Run(run_dir, cfg, loop.history, model, ds.classes, report)


def _resolve_precision(precision: str, device: torch.device, verbose: bool) -> str:
    """``auto``: bf16 on CUDA GPUs that have it and CPUs with AMX / AVX-512-BF16, else fp32 (said once)."""
    has_bf16 = (torch.cuda.is_bf16_supported() if device.type == "cuda" else _cpu_has_bf16())
    if precision == "auto":
        if not has_bf16 and verbose:
            print(f"note: no bf16 matrix units on this {device.type}: training in fp32", file=sys.stderr)
        return "bf16" if has_bf16 else "fp32"
    if precision == "bf16" and not has_bf16 and verbose:
        print("note: this CPU has no bf16 matrix units (AMX / AVX-512-BF16): bf16 autocast will be slow",
              file=sys.stderr)
    return precision


def _init_sample(ds: Dataset, cfg: TrainConfig, device: torch.device, n: int = 5000) -> torch.Tensor:
    """Up to ``n`` normalised training images, for data-dependent initialisation."""
    index = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(cfg.seed))[:n]
    loader = make_loader(ds.train.subset(index), ds.channels, ds.image_size, 1000,
                         Normalize(cfg.mean, cfg.std, device), device, workers=cfg.workers)
    return torch.cat([x for x, _ in loader])


def _plan_budget(cfg: TrainConfig, ds: Dataset, net: nn.Module, model: nn.Module,
                 optimizer: torch.optim.Optimizer, train_loader: Any, normalize: Normalize, device: torch.device,
                 loss_weights: torch.Tensor | None, started: float) -> BudgetPlan:
    from recog.engine.budget import parse_duration, plan
    from recog.engine.schedule import epochs_to_steps
    from recog.engine.trainer import Stepper, autocast

    budget = parse_duration(cfg.time_budget)
    stepper = Stepper(net, model, optimizer, cfg, device, loss_weights)
    stepper.set_lr(0.0)  # the calibration steps are undone anyway; a zero step keeps them harmless
    train_loader.set_epoch(0)
    eval_name_split = ds.eval_split
    eval_split = eval_name_split[1] if eval_name_split else ds.train
    eval_batch = next(iter(make_loader(eval_split, ds.channels, ds.image_size, 256, normalize, device,
                                       workers=cfg.workers, channels_last=cfg.channels_last)))[0]
    views = len(tta_views(cfg.flip, cfg.translate, cfg.tta_translate)) if cfg.tta else 1
    freeze_step = epochs_to_steps(cfg.freeze_stem_epochs, len(train_loader))

    def freeze() -> Callable[[], None]:
        flags = [(p, p.requires_grad) for p in model.parameters()]
        model.freeze_stem()

        def undo() -> None:
            for p, flag in flags:
                p.requires_grad_(flag)
        return undo

    budget_plan, warnings = plan(
        budget, started, stepper, net, optimizer, train_loader, len(train_loader), eval_batch,
        len(ds.val) if ds.val is not None else 0, len(eval_split) if eval_name_split else 0, views,
        lambda: autocast(device, cfg.precision), freeze=freeze if freeze_step is not None else None,
        freeze_step=freeze_step)
    if is_main() and cfg.verbose:
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        print(budget_plan.describe(budget), file=sys.stderr)
    return budget_plan


def _replan(cfg: TrainConfig, deadline: float, steps_per_epoch: int, run_dir: Path, steps_done: int, step_s: float,
            val_s: float) -> int:
    """After each epoch of a ``--time-budget`` run: the steps that fit, from the measured step time;
    the run folder's config.yaml follows, so that ``--resume`` continues the same plan."""
    from recog.engine.budget import steps_left

    steps = steps_done + steps_left(deadline, step_s, val_s, steps_per_epoch)
    if steps != cfg.steps and cfg.verbose and is_main():
        print(f"time budget: {step_s * 1000:.0f} ms/step measured -> {steps} steps in all "
              f"({steps / steps_per_epoch:.2f} epochs; planned {cfg.steps})", file=sys.stderr)
    if steps != cfg.steps and is_main():
        save_yaml(dataclasses.replace(cfg, steps=steps, epochs=math.ceil(steps / steps_per_epoch)),
                  run_dir / "config.yaml")
    return steps


def _dataset(cfg: TrainConfig | None, data: str, data_root: str | None, val_fraction: float, split_seed: int,
             image_size: int | None, channels: int | None, device: str) -> Dataset:
    options: dict[str, Any] = {"device": device}
    if cfg is not None:
        options.update(loader=cfg.loader, memory_fraction=cfg.memory_fraction, cache=cfg.cache,
                       max_image_pixels=cfg.max_image_pixels, allow_empty_classes=cfg.allow_empty_classes)
    return load_dataset(data, data_root, val_fraction, split_seed, image_size, channels, **options)


def _measure_stats(ds: Dataset) -> tuple[list[float], list[float]]:
    """Channel mean/std of the training images (a sample of up to 2,000 decoded files when streaming)."""
    if ds.in_memory:
        return channel_stats(ds.train.images)
    n = len(ds.train)
    index = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:2000]
    sample = ds.train.subset(index)
    loader = make_loader(sample, ds.channels, ds.image_size, 256, Normalize([0.0] * ds.channels,
                                                                           [1 / 255] * ds.channels))
    images = torch.cat([x for x, _ in loader]).round().to(torch.uint8)  # the identity normalisation: raw pixels
    return channel_stats(images)


def _class_weights(ds: Dataset) -> torch.Tensor:
    """Loss weights inverse to class frequency, mean 1 over the classes present."""
    counts = ds.counts(ds.train).float()
    present = counts > 0
    weights = torch.ones_like(counts)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return weights


def _sample_weights(ds: Dataset) -> torch.Tensor:
    """Per-image sampling weights giving every class the same share of each epoch."""
    return (1.0 / ds.counts(ds.train).double())[ds.train.labels]


def weights_meta(cfg: TrainConfig, ds: Dataset) -> dict[str, Any]:
    """What travels with the weights: enough to rebuild the model and read an image the same way."""
    return {
        "model": cfg.model,
        "model_args": cfg.model_args,
        "classes": ds.classes,
        "channels": ds.channels,
        "image_size": ds.image_size,
        "mean": cfg.mean,
        "std": cfg.std,
        "resize": "shorter-side, centre-crop",
        "flip": cfg.flip,
        "translate": cfg.translate,
        "data": cfg.data,
        "recog_version": __version__,
    }


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # unknown: say nothing
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'recog[tensorboard]'") from None
    return SummaryWriter(str(run_dir / "tensorboard"))


# ----------------------------------------------------------------------------------------------
# load, evaluate, predict


def load(source: str | os.PathLike, device: str = "auto") -> Classifier:
    """A run folder or a ``.safetensors`` file saved by recog, ready to predict."""
    path, run_dir = _weights_file(source)
    state, meta = read_weights(path)
    if meta is None:
        raise WeightsError(f"{path} carries no recog metadata (classes, preprocessing); "
                           f"use weights saved by recog, or pass it to training with --weights")
    dev = resolve_device(device)
    model = create_model(meta["model"], len(meta["classes"]), meta["channels"], meta["image_size"],
                         **meta.get("model_args", {}))
    load_into(model, state, str(path))
    model.to(dev).eval()
    cfg = make_config(run_dir / "config.yaml", verbose=False) if run_dir else None
    if cfg is not None and cfg.channels_last:  # as it was trained: faster convolutions (1.3x on CPU)
        model.to(memory_format=torch.channels_last)
    return Classifier(model, meta, dev, path, cfg)


def evaluate(
    source: str | os.PathLike,
    data: str | None = None,
    data_root: str | None = None,
    tta: bool = False,
    out: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 256,
    verbose: bool = True,
) -> dict[str, Any]:
    """Evaluate a run or weights file on ``data`` (default: the run's own data) and write a report."""
    clf = load(source, device)
    cfg = clf.config
    if data is None:
        if cfg is None:
            raise ConfigError("which data? pass --data (a dataset name or image folder) for a bare weights file")
        data = cfg.data
        data_root = data_root or cfg.data_root
    same = cfg is not None and data == cfg.data
    ds = _dataset(cfg, data, data_root, cfg.val_fraction if same else 0.0, cfg.split_seed if same else 0,
                  clf.meta["image_size"], clf.meta["channels"], str(clf.device))
    if ds.classes != clf.classes:
        raise DataError(f"the classes of {data} ({', '.join(ds.classes[:6])}…) are not the model's "
                        f"({', '.join(clf.classes[:6])}…)")
    if (ds.channels, ds.image_size) != (clf.meta["channels"], clf.meta["image_size"]):
        raise DataError(f"{data} has {ds.channels}x{ds.image_size}px images; the model takes "
                        f"{clf.meta['channels']}x{clf.meta['image_size']}px")
    if ds.eval_split is None:
        raise DataError(f"{data} has no test or val split to evaluate on")
    split_name, split = ds.eval_split
    precision = cfg.precision if cfg else "fp32"
    with reuse_freed_memory(clf.device.type == "cpu" and (cfg.reuse_memory if cfg else True)):  # 1.4x with TTA
        report = _eval_on(clf, split, split_name, precision, tta, batch_size, cfg.workers if cfg else None)
    report["title"] = f"{clf.source} on {data}"
    out_dir = Path(out) if out else next_run_dir(cfg.project if cfg else "runs", "eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_report(out_dir, report)
    report["out"] = str(out_dir)
    if verbose:
        print(f"report written to {out_dir}", file=sys.stderr)
    return report


def _expand(sources: Sequence[str | os.PathLike]) -> list[Path]:
    files: list[Path] = []
    for s in sources:
        p = Path(s).expanduser()
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f)
                                and not any(part.startswith(".") for part in f.relative_to(p).parts)))
        elif p.exists():
            files.append(p)
        else:
            raise DataError(f"no such file or folder: {p}")
    return files


def predict(
    source: str | os.PathLike | Classifier,
    images: str | os.PathLike | Sequence[str | os.PathLike],
    top_k: int = 5,
    device: str = "auto",
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """Top-k classes per image: ``[{"path", "top": [{"class", "prob"}…]}]``; unreadable files get ``"error"``."""
    clf = source if isinstance(source, Classifier) else load(source, device)
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    paths = _expand([images] if isinstance(images, (str, os.PathLike)) else images)
    results: list[dict[str, Any]] = []
    c, s = clf.meta["channels"], clf.meta["image_size"]
    for start in range(0, len(paths), batch_size):
        batch, arrays = [], []
        for p in paths[start:start + batch_size]:
            try:
                arrays.append(torch.from_numpy(load_image(p, c, s)))
                batch.append({"path": str(p)})
            except ImageReadError as exc:
                results.append({"path": str(p), "error": str(exc)})
        if arrays:
            for entry, top in zip(batch, clf.predict_images(torch.stack(arrays), top_k)):
                entry["top"] = top
            results.extend(batch)
    order = {str(p): i for i, p in enumerate(paths)}
    return sorted(results, key=lambda r: order[r["path"]])
