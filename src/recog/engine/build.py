"""Build a run: from a resolved config (:mod:`recog.engine.resolve` decided every value of it) to a
:class:`Training` (data, task, model, optimizer, loaders) that :func:`recog.engine.fit.fit` trains.
Nothing here decides: it builds what the config says, once.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recog.config import TrainConfig
from recog.data import BatchAugment, Dataset, Normalize
from recog.data.splits import AnySplit
from recog.data.stream import SamplePolicy, make_loader
from recog.device import deterministic_mode, resolve_device, seed_everything
from recog.engine import distributed as dist
from recog.engine.budget import Budget
from recog.engine.checkpoint import LoopState, reconcile, restore_state
from recog.engine.distributed import is_main
from recog.engine.optim import Lookahead, make_optimizer, optimizer_options
from recog.engine.plan import MemoryPlan
from recog.engine.resolve import Prepared
from recog.engine.schedule import size_at, training_sizes
from recog.engine.step import Stepper
from recog.errors import ConfigError
from recog.memory import reuse_freed_memory
from recog.models import create_model, feature_width, head, replace_head
from recog.runs import WEIGHTS
from recog.tasks import Task, make_task
from recog.weights import load_into


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
    started: float  # when planning began (a time budget counts from here)
    normalize: Normalize  # uint8 -> the model's input, as the loaders do it
    memory: MemoryPlan  # the activation memory the plan measured
    ran_images: int = 0  # training images this process stepped on (under DDP, its share)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    @property
    def eval_net(self) -> nn.Module:
        """What evaluates: the model, or its torch.compile (never DDP: evaluation has no gradients to
        average, and each rank evaluates its own part of the images)."""
        return self.model if dist.active() else self.net

    @functools.cached_property
    def train_sizes(self) -> list[int]:
        """Progressive resizing's sizes, the full size last (just the full size without ``resize_from``);
        each a multiple of a strided stem's patch. Worked out once: the loop asks at every step."""
        return training_sizes(self.config)

    def size_at(self, step: int, total_steps: int) -> int | None:
        """The side the images train at in ``step`` (None: as the loader gives them)."""
        sizes = self.train_sizes
        return None if len(sizes) == 1 else size_at(step, total_steps, sizes, self.config.resize_until)

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


@contextlib.contextmanager
def session(cfg: TrainConfig) -> Iterator[None]:
    """What a run changes in the process while it runs: deterministic kernels, CPU memory reuse."""
    cpu = resolve_device(cfg.device).type == "cpu"
    with deterministic_mode(cfg.deterministic), reuse_freed_memory(cfg.reuse_memory and cpu):
        yield


def build(cfg: TrainConfig, prepared: Prepared, saved: dict[str, Any] | None = None) -> Training:
    """The model, optimizer, task and loaders of a run, built once from its resolved config (see
    :func:`recog.engine.resolve.resolve`); ``saved`` is the training state to resume."""
    ds, device, run_dir = prepared.data, prepared.device, prepared.run_dir
    # ---- model, optimizer, task ------------------------------------------------------------
    seed_everything(cfg.seed)
    model = create_model(cfg.model, len(ds.classes), ds.channels, ds.image_size, **cfg.model_args)
    if cfg.head == "text":  # the classes as language: prompt embeddings of their names (recog.text)
        from recog.text import text_head

        replace_head(model, text_head(feature_width(model), ds.classes, cfg.prompt, cfg.text_encoder,
                                      cfg.verbose and is_main()))
    if prepared.empty_text is not None:  # a missing text is the empty text: the model carries its embedding
        model.empty_text.copy_(prepared.empty_text)
    if prepared.initial is not None:
        _initial_weights(model, prepared.initial, cfg)
    model = dist.sync_batch_norm(model, device, cfg.sync_bn)
    model.to(device)
    normalize = Normalize(cfg.mean, cfg.std, device)
    if hasattr(model, "data_init") and saved is None and prepared.initial is None:
        model.data_init(_init_sample(ds, cfg, normalize, device))  # e.g. airnet's patch-whitening stem
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, head=head(model)[0] if cfg.pretrained else None, **optimizer_options(cfg))
    lookahead = Lookahead(model) if cfg.lookahead else None
    state = restore_state(saved, model, optimizer, lookahead) if saved else LoopState(total_steps=cfg.steps)
    task = make_task(ds, cfg, device)
    if saved:
        correction = reconcile(state, run_dir / WEIGHTS, task.score, write=is_main())
        if correction and is_main():
            print(f"warning: {correction}", file=sys.stderr)

    # ---- loaders ---------------------------------------------------------------------------
    common = dict(channels_last=cfg.channels_last, workers=cfg.workers, force_stream=cfg.loader == "stream")
    train_loader = make_loader(
        ds.train, ds.channels, ds.image_size, cfg.batch_size, normalize, device, train=True,
        augment=BatchAugment(cfg.flip, cfg.translate, cfg.cutout, cfg.alternating_flip, cfg.random_resized_crop,
                             cfg.crop_scale, cfg.random_erasing),
        policy=SamplePolicy(cfg.random_resized_crop, cfg.crop_scale, cfg.auto_augment, cfg.color_jitter),
        seed=cfg.seed, sample_weights=ds.sample_weights() if cfg.balanced_sampling else None,
        shard=(dist.rank(), dist.world_size()), **common)
    val_loader = (make_loader(shard_split(ds.val), ds.channels, ds.image_size, max(256, cfg.batch_size), normalize,
                              device, **common)
                  if ds.val is not None and len(ds.val) else None)
    state.steps_per_epoch = len(train_loader)
    budget = (Budget(cfg.budget_s, prepared.started, cfg.verbose and is_main())
              if cfg.budget_s and saved is None else None)
    return Training(cfg, ds, task, model, _wrap(model, device, cfg.compile), optimizer, lookahead, train_loader,
                    val_loader, device, run_dir, {}, state, budget, prepared.started, normalize, prepared.memory)


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


def _initial_weights(model: nn.Module, state: dict[str, torch.Tensor], cfg: TrainConfig) -> None:
    source = cfg.weights or f"pretrained {cfg.pretrained}"
    left_out = load_into(model, state, source, strict=False)
    if left_out and cfg.verbose and is_main():
        print(f"note: {len(left_out)} tensors not taken from {source} (new or other shape): "
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
