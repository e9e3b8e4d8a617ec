"""Build a run: from a resolved config to a :class:`Training` (data, task, model, optimizer,
loaders, plan, run folder) that :func:`recog.engine.fit.fit` trains.

Every value the run uses is decided here, before the first step: what is measured (mean/std,
image size and channels, precision, the planned steps) goes into the run's own resolved config —
the input config is never changed — and that record is the run folder's ``config.yaml``.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recog import __version__
from recog.config import TrainConfig, is_fusion, save_yaml
from recog.data import BatchAugment, Dataset, Normalize, channel_stats, list_sources, load_dataset
from recog.data.image import DEFAULT_MAX_PIXELS
from recog.data.splits import AnySplit
from recog.data.files import total_memory
from recog.data.stream import SamplePolicy, default_workers, make_loader
from recog.device import autocast, deterministic_mode, resolve_device, resolve_precision, seed_everything
from recog.engine.budget import Budget, time_eval
from recog.engine.checkpoint import LoopState, reconcile, restore_state
from recog.engine import distributed as dist
from recog.engine.distributed import is_main
from recog.engine.memory import reuse_freed_memory
from recog.engine.optim import Lookahead, make_optimizer
from recog.engine.plan import (MEMORY_FRACTION, MemoryPlan, activation_bytes, available_memory, fill_defaults,
                               plan_memory)
from recog.engine.schedule import epochs_to_steps
from recog.engine.step import Stepper
from recog.errors import ConfigError
from recog.evaluation import tta_views
from recog.fileio import check_folder, next_run_dir
from recog.models import create_model, feature_width, replace_head
from recog.report import write_skipped
from recog.tasks import Classification, MultiLabel, Task
from recog.weights import load_into, read_weights


TTA_RECIPES = ("small", "photos")  # ``tta`` unset: on with these recipes (as a time budget affords), else off


@dataclass
class Training:
    """Everything one run trains with; ``config`` is the resolved record of the run."""

    config: TrainConfig
    data: Dataset
    task: Task
    model: nn.Module  # what is saved
    net: nn.Module  # what trains: the model, or its DDP wrapper and/or torch.compile
    optimizer: torch.optim.Optimizer
    lookahead: Lookahead | None
    train_loader: Any
    val_loader: Any | None
    device: torch.device
    run_dir: Path
    meta: dict[str, Any]  # what travels with the weights
    state: LoopState  # where the loop starts (restored when resuming)
    budget: Budget | None
    started: float  # when set-up began (a time budget counts from here)
    ran_images: int = 0  # training images this process stepped on (under DDP, its share)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    @property
    def eval_net(self) -> nn.Module:
        """What evaluates: the model, or its torch.compile (never DDP: evaluation has no gradients to
        average, and each rank evaluates its own part of the images)."""
        return self.model if dist.active() else self.net

    def stepper(self) -> Stepper:
        c = self.config
        return Stepper(self.net, self.model, self.optimizer, self.task, self.device, c.precision, c.l1,
                       c.grad_clip, c.micro_batch, dist.all_finite if dist.active() else None)

    def rewrap(self, stepper: Stepper | None = None) -> None:
        """After the trainable parameters changed (the stem freeze): DDP records them when it is
        built, so it is built again (every rank at the same step), and the stepper follows."""
        if dist.active():
            self.net = _wrap(self.model, self.device, self.config.compile)
            if stepper is not None:
                stepper.net = self.net

    def record(self, total_steps: int) -> None:
        """The run's resolved config follows the steps now planned (a time budget re-plans after each
        epoch), and so does its ``config.yaml`` (rank 0), so that ``--resume`` continues the plan."""
        self.config = self.config.replace(steps=total_steps, epochs=math.ceil(total_steps / self.steps_per_epoch))
        if is_main():
            save_yaml(self.config, self.run_dir / "config.yaml")


@contextlib.contextmanager
def session(cfg: TrainConfig) -> Iterator[None]:
    """What a run changes in the process while it runs: deterministic kernels, CPU memory reuse."""
    cpu = resolve_device(cfg.device).type == "cpu"
    with deterministic_mode(cfg.deterministic), reuse_freed_memory(cfg.reuse_memory and cpu):
        yield


def build(cfg: TrainConfig, saved: dict[str, Any] | None = None, run_dir: Path | None = None,
          planning_s: float = 0.0) -> Training:
    """The data, model, optimizer and loaders of a run; ``saved`` is the training state to resume.
    ``planning_s``: what planning took before (timing sizes), counted in a time budget; decoding is not."""
    device = dist.device_for(resolve_device(cfg.device))
    cfg = fill_defaults(cfg)
    if run_dir is None:
        check_folder(cfg.project, "project")  # before the data is loaded, not after minutes of decoding
    check_batch_memory(cfg)
    if cfg.data not in list_sources() and cfg.data.strip() and Path(cfg.data).expanduser().exists():
        cfg = cfg.replace(data=str(Path(cfg.data).expanduser().resolve()))  # a path: recorded absolute, for eval
    ds = dist.in_turns(lambda: run_data(cfg, cfg.image_size, cfg.channels, device))  # rank 0 fills the cache
    if cfg.mean is not None and not len(cfg.mean) == len(cfg.std) == ds.channels:
        raise ConfigError(f"mean and std need one value per channel: the images have {ds.channels}, "
                          f"got mean {list(cfg.mean)} and std {list(cfg.std)}")
    mean, std = (cfg.mean, cfg.std) if cfg.mean is not None else measure_stats(ds)
    cfg = cfg.replace(precision=resolve_precision(cfg.precision, device, cfg.verbose and is_main()),
                      mean=mean, std=std, image_size=ds.image_size, channels=ds.channels,
                      workers=default_workers() if cfg.workers is None else cfg.workers,
                      max_image_pixels=cfg.max_image_pixels or DEFAULT_MAX_PIXELS, world_size=dist.world_size())
    cfg, empty_text = _fusion_inputs(cfg, ds)
    _describe(ds, cfg)
    started = time.perf_counter() - planning_s

    # ---- model, optimizer, task ------------------------------------------------------------
    seed_everything(cfg.seed)
    model = create_model(cfg.model, len(ds.classes), ds.channels, ds.image_size, **cfg.model_args)
    if cfg.head == "text":  # the classes as language: prompt embeddings of their names (recog.text)
        from recog.text import text_head

        replace_head(model, text_head(feature_width(model), ds.classes, cfg.prompt, cfg.text_encoder,
                                      cfg.verbose and is_main()))
    if empty_text is not None:  # a missing text is the empty text: the model carries its embedding
        model.empty_text.copy_(empty_text)
    if cfg.weights and saved is None:
        _initial_weights(model, cfg)
    if cfg.freeze_stem_epochs is not None and not hasattr(model, "freeze_stem"):
        raise ConfigError(f"freeze_stem_epochs: model {cfg.model!r} has no stem to freeze (airnet has)")
    model = dist.sync_batch_norm(model, device, cfg.sync_bn)
    model.to(device)
    normalize = Normalize(cfg.mean, cfg.std, device)
    if hasattr(model, "data_init") and saved is None and not cfg.weights:
        model.data_init(_init_sample(ds, cfg, normalize, device))  # e.g. airnet's patch-whitening stem
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    cfg, memory = _plan_memory(cfg, model, ds, device)
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.nesterov,
                               cfg.bias_lr_scale, cfg.muon_lr, cfg.muon_momentum)
    lookahead = Lookahead(model) if cfg.lookahead else None
    state = restore_state(saved, model, optimizer, lookahead) if saved else LoopState()
    task = make_task(ds, cfg, device)
    if saved and run_dir is not None:
        correction = reconcile(state, run_dir / "weights", task.score, write=is_main())
        if correction and is_main():
            print(f"warning: {correction}", file=sys.stderr)

    # ---- loaders ---------------------------------------------------------------------------
    common = dict(channels_last=cfg.channels_last, workers=cfg.workers, force_stream=cfg.loader == "stream")
    train_loader = make_loader(
        ds.train, ds.channels, ds.image_size, cfg.batch_size, normalize, device, train=True,
        augment=BatchAugment(cfg.flip, cfg.translate, cfg.cutout, cfg.alternating_flip, cfg.random_resized_crop,
                             cfg.crop_scale, cfg.random_erasing),
        policy=SamplePolicy(cfg.random_resized_crop, cfg.crop_scale, cfg.auto_augment, cfg.color_jitter),
        seed=cfg.seed, sample_weights=sample_weights(ds) if cfg.balanced_sampling else None,
        shard=(dist.rank(), dist.world_size()), **common)
    val_loader = (make_loader(shard_split(ds.val), ds.channels, ds.image_size, max(256, cfg.batch_size), normalize,
                              device, **common)
                  if ds.val is not None and len(ds.val) else None)
    net = _wrap(model, device, cfg.compile)

    # ---- the plan: steps, and the run folder that records it -------------------------------
    steps_per_epoch = len(train_loader)
    budget = Budget(cfg.budget_s, started, cfg.verbose and is_main()) if cfg.budget_s and saved is None else None
    if state.total_steps is None:  # --steps wins over --epochs; a resumed run keeps its plan
        state.total_steps = cfg.steps or (cfg.epochs or 1) * steps_per_epoch  # a time budget sizes it below
    if run_dir is None:
        run_dir = dist.broadcast(next_run_dir(cfg.project, cfg.name) if is_main() else None)
    dist.mark(run_dir)  # a torchrun restart continues this folder
    meta = weights_meta(cfg, ds, task)
    training = Training(cfg, ds, task, model, net, optimizer, lookahead, train_loader, val_loader, device, run_dir,
                        meta, state, budget, started)
    if budget is not None:
        state.total_steps = _calibrate(training, normalize)
        # rank 0's timings decide: every rank must run the same steps
        training.config, state.total_steps, training.meta = dist.broadcast((training.config, state.total_steps,
                                                                            training.meta))
    elif cfg.tta is None:  # no budget to spend: the recipes' TTA on, all views
        training.config = cfg.replace(tta=cfg.recipe in TTA_RECIPES)
    cfg = training.config
    training.config = cfg = cfg.replace(warmup_epochs=_warmup_epochs(cfg, state.total_steps, steps_per_epoch),
                                        name=run_dir.name)
    training.record(state.total_steps)
    if cfg.verbose and is_main():
        print(plan_line(training, memory), file=sys.stderr)
    if is_main() and ds.skipped:
        write_skipped(run_dir / "skipped.csv", ds.skipped)
    return training


def _fusion_inputs(cfg: TrainConfig, ds: Dataset) -> tuple[TrainConfig, torch.Tensor | None]:
    """A fusion model: every item's text embedded once (frozen encoder, cached), the embedding width and
    the fusion settings recorded in ``model_args`` (so the weights rebuild the model); (config, the empty
    text's embedding). Other models: a note when the data's texts go unused."""
    if not is_fusion(cfg.model):
        if ds.has_text and cfg.verbose and is_main():
            print(f"note: the manifest's text column is read by fusion models only (--model fusion:{cfg.model}); "
                  f"{cfg.model} learns from the images", file=sys.stderr)
        return cfg, None
    from recog.text import attach_text

    empty = attach_text(ds, cfg.text_encoder)
    args = {**cfg.model_args, "fusion": cfg.fusion or cfg.model_args.get("fusion", "concat"),
            "modalities": cfg.modalities or cfg.model_args.get("modalities", "image,text"), "text_dim": len(empty)}
    return cfg.replace(model_args=args, fusion=args["fusion"], modalities=args["modalities"]), empty


def shard_split(split: AnySplit) -> AnySplit:
    """This rank's contiguous part of an evaluation split under DDP (the whole split on one process)."""
    if not dist.active():
        return split
    if len(split) < dist.world_size():
        raise ConfigError(f"an evaluation split of {len(split)} images cannot be shared by {dist.world_size()} "
                          f"processes; use fewer processes or more images")
    return split.subset(torch.arange(len(split))[dist.shard(len(split))])


def _wrap(model: nn.Module, device: torch.device, compile_: bool) -> nn.Module:
    """What trains: DDP around the model under torchrun, then torch.compile when asked."""
    net = dist.wrap(model, device)
    return torch.compile(net) if compile_ else net


def plan_line(training: Training, memory: MemoryPlan) -> str:
    """The plan in one line a person reads: recipe, model, size, precision, batch, epochs, time, memory."""
    cfg, model = training.config, training.model
    params = sum(p.numel() for p in model.parameters())
    stride = cfg.model_args.get("stem_stride", 1)
    budget = training.budget.plan if training.budget is not None else None
    epochs = training.state.total_steps / training.steps_per_epoch
    timing = (f" in {cfg.time_budget} (est. {budget.epoch_s:.3g} s/epoch + {budget.final_eval_s:.0f} s final "
              f"evaluation)" if budget is not None else "")
    size = training.data.image_size
    return (f"plan: {cfg.recipe or 'no'} recipe: {cfg.model} {params / 1e6:.2f} M params at {size} px"
            f"{f' (stem {stride}x{stride} patches)' if stride > 1 else ''}, {cfg.precision}"
            f"{', channels-last' if cfg.channels_last else ''}, batch {cfg.batch_size}, "
            f"{epochs:.3g} epoch{'' if epochs == 1 else 's'}{timing}"
            f"{f' on {dist.world_size()} processes' if dist.world_size() > 1 else ''}; "
            f"{memory.describe(cfg.batch_size)}")


def _plan_memory(cfg: TrainConfig, model: nn.Module, ds: Dataset, device: torch.device) -> tuple[TrainConfig,
                                                                                                   MemoryPlan]:
    """Measure the activations per image; micro-batches when a batch would not fit (said once)."""
    per_image = activation_bytes(model, ds.channels, ds.image_size, cfg.precision, device)
    memory = plan_memory(per_image, cfg.batch_size, cfg.micro_batch, available_memory(device),
                         f"{cfg.model} at {ds.image_size} px, batch {cfg.batch_size}")
    if memory.micro_batch != cfg.micro_batch:
        if cfg.verbose and is_main():
            print(f"note: a batch of {cfg.batch_size} would not fit in memory: forward and backward run in "
                  f"micro-batches of {memory.micro_batch} (one optimizer step per batch)", file=sys.stderr)
        cfg = cfg.replace(micro_batch=memory.micro_batch)
    return cfg, memory


def check_batch_memory(cfg: TrainConfig, fraction: float = MEMORY_FRACTION) -> None:
    """Refuse an ``image_size`` at which one batch of input images alone (as floats) would take more
    than ``fraction`` of the machine's memory: a clear error now instead of the OOM killer later."""
    if cfg.image_size is None:
        return
    channels = cfg.channels or 3
    batch_bytes = cfg.batch_size * channels * cfg.image_size**2 * 4
    total = total_memory()
    if batch_bytes > fraction * total:
        raise ConfigError(f"image_size {cfg.image_size}: one batch of {cfg.batch_size} images takes "
                          f"{batch_bytes / 2**30:.1f} GiB as floats before any layer runs, more than "
                          f"{fraction:.0%} of this machine's {total / 2**30:.0f} GiB; use a smaller --image-size "
                          f"or --batch-size")


def data_options(cfg: TrainConfig, device: torch.device | str) -> dict[str, Any]:
    """The config's options for path sources (image folders, manifests)."""
    return dict(loader=cfg.loader, memory_fraction=cfg.memory_fraction, cache=cfg.cache,
                max_image_pixels=cfg.max_image_pixels, allow_empty_classes=cfg.allow_empty_classes,
                device=str(device), without_test=cfg.final_eval != "auto")


def run_data(cfg: TrainConfig, image_size: int, channels: int, device: torch.device | str) -> Dataset:
    """The data a run was trained on, split as it was (evaluation and explanations read it again)."""
    return load_dataset(cfg.data, cfg.data_root, cfg.val_fraction, cfg.split_seed, image_size, channels,
                        **data_options(cfg, device))


def _describe(ds: Dataset, cfg: TrainConfig) -> None:
    """The data summary, notes and an imbalance warning (rank 0)."""
    if not is_main():
        return
    if cfg.verbose:
        print(ds.summary(), file=sys.stderr)
        for note in ds.notes:
            print(f"note: {note}", file=sys.stderr)
    imbalance = ds.imbalance()
    if imbalance and cfg.class_weights is None and not cfg.balanced_sampling and cfg.pos_weight is None:
        big, small, ratio = imbalance
        fix = "--pos-weight auto" if ds.multilabel else "--class-weights auto or --balanced-sampling"
        if math.isinf(ratio):  # an empty class (--allow-empty-classes)
            print(f"warning: class {ds.classes[small]!r} has no training images; the model will never learn "
                  f"it", file=sys.stderr)
        else:
            print(f"warning: class imbalance: {ds.classes[big]!r} has {ratio:.1f}x the training images of "
                  f"{ds.classes[small]!r}; consider {fix}", file=sys.stderr)


def make_task(ds: Dataset, cfg: TrainConfig, device: torch.device) -> Task:
    """Multi-label for multi-hot labels (a manifest with a ``labels`` column), else classification."""
    if ds.multilabel:
        if cfg.class_weights or cfg.balanced_sampling:
            raise ConfigError("class_weights and balanced_sampling are for single-label data; "
                              "multi-label data takes --pos-weight auto")
        weight = pos_weight(ds).to(device) if cfg.pos_weight == "auto" else None
        return MultiLabel(weight, cfg.label_smoothing)
    if cfg.pos_weight:
        raise ConfigError("pos_weight is for multi-label data (a manifest with a 'labels' column); "
                          "single-label data takes --class-weights auto")
    weights = class_weights(ds).to(device) if cfg.class_weights == "auto" else None
    return Classification(weights, cfg.label_smoothing)


def _initial_weights(model: nn.Module, cfg: TrainConfig) -> None:
    state, _ = read_weights(cfg.weights)
    left_out = load_into(model, state, cfg.weights, strict=False)
    if left_out and cfg.verbose:
        print(f"note: {len(left_out)} tensors not taken from {cfg.weights} (new or other shape): "
              f"{', '.join(left_out[:4])}{' …' if len(left_out) > 4 else ''}", file=sys.stderr)


def _init_sample(ds: Dataset, cfg: TrainConfig, normalize: Normalize, device: torch.device,
                 n: int = 5000) -> torch.Tensor:
    """Up to ``n`` normalised training images (fewer for large images: as many pixels as 5,000 at 32
    px), for data-dependent initialisation."""
    n = max(64, min(n, n * 32**2 // ds.image_size**2))
    index = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(cfg.seed))[:n]
    loader = make_loader(ds.train.subset(index), ds.channels, ds.image_size, 1000, normalize, device,
                         workers=cfg.workers)
    return torch.cat([batch[0] for batch in loader])


def _calibrate(training: Training, normalize: Normalize) -> int:
    """Time real steps and an evaluation batch; the budget then holds the plan and its deadline."""
    cfg, ds, model = training.config, training.data, training.model
    stepper = training.stepper()
    stepper.set_lr(0.0)  # the calibration steps are undone anyway; a zero step keeps them harmless
    training.train_loader.set_epoch(0)
    eval_split = ds.eval_split[1] if ds.eval_split else ds.train
    eval_batch = next(iter(make_loader(eval_split, ds.channels, ds.image_size, 256, normalize, training.device,
                                       workers=cfg.workers, channels_last=cfg.channels_last)))[0]
    eval_image_s = time_eval(training.eval_net, eval_batch, lambda: autocast(training.device, cfg.precision))
    if cfg.tta is None:  # the recipes' TTA, as many views as 10% of the budget affords; none without a recipe
        final_images = len(eval_split) if ds.eval_split else 0
        tta, translate = (afford_tta(cfg, final_images * eval_image_s, training.budget.seconds)
                          if cfg.recipe in TTA_RECIPES else (False, cfg.tta_translate))
        training.config = cfg = cfg.replace(tta=tta, tta_translate=translate)
        training.meta["tta_translate"] = translate
    views = len(tta_views(cfg.flip, cfg.translate, cfg.tta_translate)) if cfg.tta else 1
    freeze_step = epochs_to_steps(cfg.freeze_stem_epochs, training.steps_per_epoch)

    def freeze() -> Any:
        flags = [(p, p.requires_grad) for p in model.parameters()]
        model.freeze_stem()
        training.rewrap(stepper)

        def undo() -> None:
            for p, flag in flags:
                p.requires_grad_(flag)
            training.rewrap(stepper)
        return undo

    sizes = dict(steps_per_epoch=training.steps_per_epoch, val_images=len(ds.val) if ds.val is not None else 0,
                 final_images=len(eval_split) if ds.eval_split else 0, final_views=views)
    return training.budget.calibrate(stepper, training.model, training.optimizer, training.train_loader, eval_batch,
                                     lambda: autocast(training.device, cfg.precision), sizes,
                                     freeze if freeze_step is not None else None, freeze_step,
                                     eval_image_s=eval_image_s)


def afford_tta(cfg: TrainConfig, view_s: float, budget_s: float, share: float = 0.1) -> tuple[bool, bool]:
    """(tta, tta_translate) for a recipe's TTA under a time budget: all views (flip x 1-px shifts)
    when the final evaluation with them takes at most ``share`` of the budget, else the flip alone,
    else none. ``view_s``: one view of the final evaluation's images."""
    for translate in (True, False):
        views = len(tta_views(cfg.flip, cfg.translate, translate and cfg.tta_translate))
        if views > 1 and views * view_s <= share * budget_s:
            return True, translate and cfg.tta_translate
    return False, cfg.tta_translate


def _warmup_epochs(cfg: TrainConfig, total_steps: int, steps_per_epoch: int) -> float:
    """The warm-up as it will run, in epochs (unset: 30% of the steps for onecycle, else none)."""
    if cfg.warmup_epochs is not None:
        return cfg.warmup_epochs
    return int(0.3 * total_steps) / steps_per_epoch if cfg.schedule == "onecycle" else 0.0


def measure_stats(ds: Dataset) -> tuple[list[float], list[float]]:
    """Channel mean/std of the training images (a sample of up to 2,000 decoded files when streaming)."""
    if ds.in_memory:
        return channel_stats(ds.train.images)
    index = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(0))[:2000]
    loader = make_loader(ds.train.subset(index), ds.channels, ds.image_size, 256,
                         Normalize([0.0] * ds.channels, [1 / 255] * ds.channels))
    images = torch.cat([b[0] for b in loader]).round().to(torch.uint8)  # the identity normalisation: raw pixels
    return channel_stats(images)


def class_weights(ds: Dataset) -> torch.Tensor:
    """Loss weights inverse to class frequency, mean 1 over the classes present."""
    counts = ds.counts(ds.train).float()
    present = counts > 0
    weights = torch.ones_like(counts)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return weights


def pos_weight(ds: Dataset) -> torch.Tensor:
    """Multi-label: each label's positives weighted by its negatives/positives (1 for absent labels)."""
    positives = ds.counts(ds.train).float()
    negatives = len(ds.train) - positives
    return torch.where(positives > 0, negatives / positives.clamp_min(1), torch.ones_like(positives))


def sample_weights(ds: Dataset) -> torch.Tensor:
    """Per-image sampling weights giving every class the same share of each epoch."""
    if ds.multilabel:
        raise ConfigError("balanced_sampling is for single-label data")
    return (1.0 / ds.counts(ds.train).double())[ds.train.labels]


def text_encoder_id(spec: str | None) -> str:
    from recog.text import encoder_id

    return encoder_id(spec)


def weights_meta(cfg: TrainConfig, ds: Dataset, task: Task) -> dict[str, Any]:
    """What travels with the weights: enough to rebuild the model and read an image the same way."""
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
        "data": cfg.data,
        **({"head": "text", "prompt": cfg.prompt, "text_encoder": text_encoder_id(cfg.text_encoder)}
           if cfg.head == "text" else {}),
        **({"inputs": ["image", "text"], "text_encoder": text_encoder_id(cfg.text_encoder)}
           if is_fusion(cfg.model) else {}),
        "recog_version": __version__,
    }
