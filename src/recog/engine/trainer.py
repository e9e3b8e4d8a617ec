"""The training loop: one readable loop in commented stages, a handful of hooks, no callback zoo."""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recog.config import TrainConfig
from recog.engine.checkpoint import save_state, save_weights
from recog.engine.distributed import is_main
from recog.engine.optim import Lookahead, l1_penalty
from recog.engine.schedule import epochs_to_steps, lr_at
from recog.errors import TrainingError

# called with the epoch's metrics row plus "model" (the module being trained); True stops training
EpochHook = Callable[[dict[str, Any]], "bool | None"]


@dataclass
class Hooks:
    """What the loop calls after each epoch besides training, in this order; each optional."""

    write_metrics: Callable[[list[dict[str, Any]]], None] | None = None  # the history so far (metrics.csv)
    writer: Any | None = None  # a TensorBoard SummaryWriter
    # --time-budget: (steps done, seconds per step, validation seconds) -> the new total of steps
    replan: Callable[[int, float, float], int] | None = None
    on_epoch_end: EpochHook | None = None  # the user's: tuning trials report here and may stop the run


@dataclass
class LoopState:
    """What a resumed run needs besides the weights and optimizer: saved in ``weights/state.pt``."""

    epoch: int = 0  # epochs completed
    best_acc: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def collect_logits(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    precision: str,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 outputs, labels) over a loader with ``model`` in eval mode, on the CPU. ``forward``
    replaces ``model(x)`` (test-time augmentation averages several views through it)."""
    forward = forward or model
    was_training = model.training
    model.eval()
    outs, labels = [], []
    with autocast(device, precision):
        for x, y in loader:
            outs.append(forward(x).float().cpu())
            labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(outs), torch.cat(labels)


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=False,
                dynamic_ncols=True, bar_format="{desc} {percentage:3.0f}%|{bar:20}| {n}/{total} "
                "[{elapsed}<{remaining}{postfix}]")


class NonFiniteLoss(Exception):
    def __init__(self, value: float) -> None:
        super().__init__(value)
        self.value = value


class Stepper:
    """One optimisation step: forward under autocast, loss (+ L1), NaN check, backward, clip, step.

    Shared by the loop and by the time-budget calibration, so both measure the same work."""

    def __init__(self, model: nn.Module, raw_model: nn.Module, optimizer: torch.optim.Optimizer,
                 cfg: TrainConfig, device: torch.device, loss_weights: torch.Tensor | None = None) -> None:
        self.model, self.raw_model, self.optimizer, self.cfg, self.device = model, raw_model, optimizer, cfg, device
        self.criterion = nn.CrossEntropyLoss(weight=loss_weights, label_smoothing=cfg.label_smoothing)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the batch; with ``micro_batch`` the batch's forward and backward run
        in chunks whose gradients add up (each chunk's mean loss weighted by its share of the batch),
        so a large batch fits in memory or in cache. Batch-norm then normalises per chunk."""
        chunk = self.cfg.micro_batch or len(x)
        outs, total = [], 0.0
        for start in range(0, len(x), chunk):
            xs, ys = (x, y) if chunk >= len(x) else (x[start:start + chunk], y[start:start + chunk])
            with autocast(self.device, self.cfg.precision):
                out = self.model(xs)
                loss = self.criterion(out.float(), ys)
            if len(xs) < len(x):
                loss = loss * (len(xs) / len(x))
            if self.cfg.l1 > 0 and start == 0:
                loss = loss + self.cfg.l1 * l1_penalty(self.raw_model)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(loss.item() * len(x) / len(xs))
            if start == 0:  # after the first forward, as the old gradients are not needed in it
                self.optimizer.zero_grad(set_to_none=True)
            # DDP: all-reduce the gradients once, after the last chunk
            last = start + chunk >= len(x)
            with contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync():
                loss.backward()
            total = total + loss.detach()
            outs.append(out.detach())
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return total, outs[0] if len(outs) == 1 else torch.cat(outs)


def train_loop(
    model: nn.Module,
    raw_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: Any,
    val_loader: Any | None,
    cfg: TrainConfig,
    device: torch.device,
    run_dir: Path,
    meta: dict[str, Any],
    state: LoopState,
    hooks: Hooks | None = None,
    loss_weights: torch.Tensor | None = None,
    lookahead: Lookahead | None = None,
) -> LoopState:
    """Train ``model`` (possibly compiled; ``raw_model`` is what gets saved) from ``state.epoch`` on.

    After each epoch: the metrics row, ``last`` weights and the training state are written, then
    ``best`` if val accuracy improved; then the hook runs. A NaN or infinite loss raises
    :class:`TrainingError` before anything is written for that epoch.

    ``hooks.replan`` (``--time-budget``) returns the new total of steps after each epoch; the LR
    schedule and ``cfg.steps``/``cfg.epochs`` follow it.
    """
    hooks = hooks or Hooks()
    steps_per_epoch = len(train_loader)
    total_steps = min(cfg.steps or cfg.epochs * steps_per_epoch, cfg.epochs * steps_per_epoch)
    warmup = epochs_to_steps(cfg.warmup_epochs, steps_per_epoch)
    freeze_step = epochs_to_steps(cfg.freeze_stem_epochs, steps_per_epoch)
    stepper = Stepper(model, raw_model, optimizer, cfg, device, loss_weights)
    weights_dir = run_dir / "weights"
    show = cfg.verbose and is_main()

    for epoch in itertools.count(state.epoch):
        if epoch >= cfg.epochs:  # cfg.epochs may change with replan
            break
        # ---- train one epoch -------------------------------------------------------------
        model.train()
        train_loader.set_epoch(epoch)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = ran = 0
        bar = _progress(train_loader, steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", show)
        for step, (x, y) in enumerate(bar):
            if epoch * steps_per_epoch + step >= total_steps:
                break  # a partial last epoch (--steps, or sized by --time-budget)
            if freeze_step is not None and epoch * steps_per_epoch + step >= freeze_step:
                raw_model.freeze_stem()  # e.g. airnet's whitening bias: also spares a backward pass
                freeze_step = None
            lr = lr_at(epoch * steps_per_epoch + step, total_steps, cfg.lr, cfg.schedule, warmup, cfg.final_lr)
            stepper.set_lr(lr)
            try:
                loss, out = stepper(x, y)
            except NonFiniteLoss as exc:
                bar.close()
                raise TrainingError(
                    f"loss became {exc.value} at epoch {epoch + 1}, step {step + 1} (lr {lr:.3g}); "
                    f"stopped without overwriting the saved weights in {weights_dir}. "
                    f"Try a lower --lr, --grad-clip, or --precision fp32."
                ) from None
            if lookahead is not None:
                lookahead.step(raw_model, epoch * steps_per_epoch + step, total_steps)
            # ---- running figures (kept on the device: no sync per step beyond the NaN check)
            ran += 1
            loss_sum += loss.detach() * len(y)
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
            if show and (step % 10 == 0 or step == steps_per_epoch - 1):
                elapsed = time.perf_counter() - t0
                bar.set_postfix_str(
                    f"loss {loss_sum.item() / seen:.4f}, acc {correct.item() / seen:.3f}, "
                    f"{seen / max(elapsed, 1e-9):.0f} img/s", refresh=False
                )
        bar.close()
        if lookahead is not None and epoch + 1 == cfg.epochs:
            lookahead.finish(raw_model)  # the final weights are the average
        train_seconds = time.perf_counter() - t0

        # ---- validate ----------------------------------------------------------------------
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": loss_sum.item() / seen,
            "train_acc": correct.item() / seen,
            "val_loss": float("nan"),
            "val_acc": float("nan"),
            "lr": lr,
            "seconds": 0.0,
        }
        if val_loader is not None:
            logits, labels = collect_logits(model, val_loader, device, cfg.precision)
            row["val_loss"] = F.cross_entropy(logits, labels).item()
            row["val_acc"] = (logits.argmax(1) == labels).float().mean().item()
        row["seconds"] = time.perf_counter() - t0
        row["train_seconds"] = train_seconds
        state.history.append(row)
        state.epoch = epoch + 1

        # ---- save: last, state, best (each an atomic rename) -----------------------------
        improved = val_loader is None or row["val_acc"] > state.best_acc
        if improved:
            state.best_acc, state.best_epoch, state.bad_epochs = row["val_acc"], epoch + 1, 0
        else:
            state.bad_epochs += 1
        patience_spent = cfg.patience is not None and state.bad_epochs >= cfg.patience
        state.stopped_early = patience_spent and epoch + 1 < cfg.epochs
        if is_main():
            epoch_meta = {**meta, "epoch": epoch + 1}
            save_weights(weights_dir / "last.safetensors", raw_model, epoch_meta)
            save_state(weights_dir / "state.pt", _state_dict(state, raw_model, optimizer, lookahead))
            if improved:
                save_weights(weights_dir / "best.safetensors", raw_model, epoch_meta)
            if hooks.write_metrics is not None:
                hooks.write_metrics(state.history)
            if hooks.writer is not None:
                for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
                    hooks.writer.add_scalar(key, row[key], epoch + 1)
                hooks.writer.flush()
        if show:
            val = f", val_loss {row['val_loss']:.4f}, val_acc {row['val_acc']:.4f}" if val_loader is not None else ""
            print(
                f"epoch {epoch + 1}/{cfg.epochs}: train_loss {row['train_loss']:.4f}, "
                f"train_acc {row['train_acc']:.4f}{val}, {row['seconds']:.1f}s",
                file=sys.stderr,
            )

        # ---- re-plan a time budget with the step time this epoch measured -------------------
        steps_done = min(total_steps, (epoch + 1) * steps_per_epoch)
        if hooks.replan is not None and steps_done < total_steps:
            total_steps = max(steps_done + 1, hooks.replan(steps_done, train_seconds / max(1, ran),
                                                     row["seconds"] - train_seconds))
            cfg.steps, cfg.epochs = total_steps, math.ceil(total_steps / steps_per_epoch)

        # ---- stop? -------------------------------------------------------------------------
        if hooks.on_epoch_end is not None and hooks.on_epoch_end(dict(row, model=raw_model)):
            state.stopped_early = epoch + 1 < cfg.epochs
            break
        if state.stopped_early:
            if show:
                print(f"early stopping: no val_acc gain for {cfg.patience} epochs; best was epoch "
                      f"{state.best_epoch}", file=sys.stderr)
            break
    return state


def _state_dict(state: LoopState, model: nn.Module, optimizer: torch.optim.Optimizer,
                lookahead: Lookahead | None = None) -> dict[str, Any]:
    return {
        "lookahead": lookahead.state_dict() if lookahead is not None else {},
        "loop": {k: getattr(state, k) for k in ("epoch", "best_acc", "best_epoch", "bad_epochs", "history",
                                                 "stopped_early")},
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state(),
        },
    }


def restore_state(saved: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                  lookahead: Lookahead | None = None) -> LoopState:
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if lookahead is not None and saved.get("lookahead"):
        lookahead.load_state_dict(saved["lookahead"])
    torch.set_rng_state(saved["rng"]["torch"])
    if saved["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    name, keys, pos, has_gauss, cached = saved["rng"]["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    return LoopState(**saved["loop"])


def _numpy_state() -> list[Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
