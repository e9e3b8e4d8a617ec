"""The training loop: one readable loop in commented stages and two hooks, no callback zoo.

Each epoch: train (the task turns a batch into a loss), validate (the task's metrics), save
(``last``, the training state, ``best`` when the task's score improved: each an atomic rename),
re-plan a time budget from the measured step time, then the hooks and early stopping.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from recog.engine.checkpoint import LoopState, save_state, state_dict
from recog.engine import distributed as dist
from recog.engine.distributed import is_main
from recog.engine.schedule import epochs_to_steps, lr_at
from recog.engine.step import NonFiniteLoss, Stepper
from recog.errors import TrainingError
from recog.evaluation import collect_logits
from recog.inference import tta_views
from recog.report import write_metrics_csv
from recog.weights import save_weights

if TYPE_CHECKING:
    from recog.engine.build import Training

# called with the epoch's metrics row plus "model" (the module being trained) and "score" (the task's
# validation score: val_acc, val_map…); True stops training
EpochHook = Callable[[dict[str, Any]], "bool | None"]


@dataclass
class Hooks:
    """What the loop calls after each epoch besides saving, in this order; each optional."""

    writer: Any | None = None  # a TensorBoard SummaryWriter
    on_epoch_end: EpochHook | None = None  # the user's: tuning trials report here and may stop the run


def fit(training: Training, hooks: Hooks | None = None) -> LoopState:
    """Train from ``training.state.epoch`` on; returns the loop state (history, best epoch).

    A NaN or infinite loss raises :class:`TrainingError` before anything is written for that epoch."""
    t, cfg, state, hooks = training, training.config, training.state, hooks or Hooks()
    spe = t.steps_per_epoch
    stepper = t.stepper()
    show = cfg.verbose and is_main() and progress_mode(cfg.progress) != "none"
    epoch = state.epoch
    while epoch < math.ceil(state.total_steps / spe):  # the total may change with a time budget
        # ---- train one epoch -----------------------------------------------------------------
        row, steps_run = _train_epoch(t, stepper, epoch, show)
        # ---- validate ------------------------------------------------------------------------
        extra_meta: dict[str, Any] = {}
        val_started = time.perf_counter()
        dist.broadcast_state(t.model, buffers_only=True)  # rank 0's batch-norm statistics validate and are saved
        if t.val_loader is not None:
            logits, targets = gathered(*collect_logits(t.eval_net, t.val_loader, t.device, cfg.precision, t.task))
            metrics, extra_meta = t.task.validate(logits, targets)
            row.update(metrics)
            _expect_final_views(t, logits)
        row["seconds"] = row["train_seconds"] + time.perf_counter() - val_started
        _check_finite(t, row, epoch)  # a broken model is never saved, as best or at all
        state.history.append(row)
        epoch = state.epoch = epoch + 1
        epochs = math.ceil(state.total_steps / spe)

        # ---- save: last, state, best (each an atomic rename) ---------------------------------
        score = row.get(t.task.score, math.nan)
        improved = t.val_loader is None or score > state.best_score
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
        else:
            state.bad_epochs += 1
        patience_spent = cfg.patience is not None and state.bad_epochs >= cfg.patience
        state.stopped_early = patience_spent and epoch < epochs
        if is_main():
            _save(t, row, {**t.meta, **extra_meta, "epoch": epoch}, improved, hooks)
        if show:
            _print_epoch(row, epochs, t.val_loader is not None, t.task.score)

        # ---- re-plan a time budget with the step time this epoch measured ----------------------
        steps_done = min(state.total_steps, epoch * spe)
        if t.budget is not None and steps_done < state.total_steps:
            _replan(t, steps_done, row["train_seconds"] / max(1, steps_run), row["seconds"] - row["train_seconds"],
                    steps_done - steps_run)

        # ---- stop? ---------------------------------------------------------------------------
        if hooks.on_epoch_end is not None and dist.broadcast(  # rank 0's hook decides for all
                bool(hooks.on_epoch_end(dict(row, model=t.model, score=row.get(t.task.score)))) if is_main() else None):
            state.stopped_early = epoch < math.ceil(state.total_steps / spe)
            break
        if state.stopped_early:
            if show:
                print(f"early stopping: no {t.task.score} gain for {cfg.patience} epochs; best was epoch "
                      f"{state.best_epoch}", file=sys.stderr)
            break
    return state


def _train_epoch(t: Training, stepper: Stepper, epoch: int, show: bool) -> tuple[dict[str, Any], int]:
    """One epoch of steps (a partial one when the plan ends inside it): its metrics row and steps run."""
    cfg, spe, total = t.config, t.steps_per_epoch, t.state.total_steps
    warmup = epochs_to_steps(cfg.warmup_epochs, spe)
    freeze_step = epochs_to_steps(cfg.freeze_stem_epochs, spe)
    t.net.train()
    t.train_loader.set_epoch(epoch)
    started = time.perf_counter()
    loss_sum = torch.zeros((), device=t.device)
    correct = torch.zeros((), device=t.device, dtype=torch.long)
    images = decisions = ran = 0
    lr = 0.0
    bar = _progress(t.train_loader, spe, f"epoch {epoch + 1}/{math.ceil(total / spe)}",
                    show and progress_mode(cfg.progress) == "bar")
    for step, batch in enumerate(bar):
        global_step = epoch * spe + step
        if t.budget is not None and ran and global_step % max(1, total // 10) == 0:
            # a budget's plan is re-planned every tenth of its steps, not only at an epoch's end: a
            # pessimistic calibration still uses the budget, an optimistic one ends on time, and a machine
            # that slows inside a long epoch is seen before the epoch ends (the 4-minute CIFAR run's second
            # epoch took 123 s where the first took 105, and the run ended 28 s late); the validation is the
            # calibrated estimate
            total = _replan(t, global_step, (time.perf_counter() - started) / ran,
                            len(t.data.val or ()) * t.budget.plan.timings.eval_image_s, global_step - ran)
        if global_step >= total:
            break  # a partial last epoch (--steps, or sized by --time-budget)
        if freeze_step is not None and global_step >= freeze_step:
            t.model.freeze_stem()  # e.g. airnet's whitening bias: also spares a backward pass
            t.rewrap(stepper)  # DDP: built again for the parameters that still train
            freeze_step = None
        lr = lr_at(global_step, total, cfg.lr, cfg.schedule, warmup, cfg.final_lr)
        stepper.set_lr(lr)
        stepper.set_size(t.size_at(global_step, total))  # progressive resizing (None: as loaded)
        try:
            loss, out = stepper(batch)
        except NonFiniteLoss as exc:
            bar.close()
            raise TrainingError(
                f"loss became {exc.value} at epoch {epoch + 1}, step {step + 1} (lr {lr:.3g}); "
                f"stopped without overwriting the saved weights in {t.run_dir / 'weights'}. "
                f"Try a lower --lr, --grad-clip, or --precision fp32.") from None
        if t.lookahead is not None:
            t.lookahead.step(t.model, global_step, total)
        # ---- running figures (kept on the device: no sync per step beyond the NaN check)
        targets = t.task.targets(batch)
        hits, n = t.task.hits(out, targets)
        ran, images, decisions = ran + 1, images + len(targets), decisions + n
        loss_sum += loss.detach() * len(targets)
        correct += hits
        if show and (step % 10 == 0 or step == spe - 1):
            elapsed = time.perf_counter() - started
            bar.set_postfix_str(f"loss {loss_sum.item() / images:.4f}, acc {correct.item() / decisions:.3f}, "
                                f"{images / max(elapsed, 1e-9):.0f} img/s", refresh=False)
    bar.close()
    counts = torch.tensor([images, decisions], device=t.device)
    t.ran_images += images
    dist.all_sum(loss_sum, correct, counts)  # the epoch's figures over all ranks
    images, decisions = (int(c) for c in counts.tolist())
    if images == 0:  # the streaming loader skipped every file: they vanished or broke after the scan
        raise TrainingError(f"no training image could be read in epoch {epoch + 1}: every file failed (the "
                            f"warnings above say why; they are listed in {t.run_dir / 'skipped.csv'})")
    if t.lookahead is not None and epoch + 1 == math.ceil(total / spe):
        t.lookahead.finish(t.model)  # the final weights are the average
    row = {"epoch": epoch + 1, "train_loss": loss_sum.item() / images, "train_acc": correct.item() / decisions,
           "val_loss": math.nan, "val_acc": math.nan, **{c: math.nan for c in t.task.columns}, "lr": lr,
           "train_seconds": time.perf_counter() - started}
    row["images_per_s"] = images / max(row["train_seconds"], 1e-9)
    return row, ran


def _replan(t: Training, steps_done: int, step_s: float, val_s: float, measured_from: int) -> int:
    """The steps a time budget fits from ``steps_done`` on, from ``step_s`` per step measured since step
    ``measured_from`` and ``val_s`` per validation, kept in the loop state (saved in state.pt: ``--resume``
    continues it; config.yaml keeps the first plan)."""
    # rank 0's measurement decides: every rank runs the same steps
    t.state.total_steps = dist.broadcast(t.budget.replan(steps_done, step_s, val_s, t.steps_per_epoch,
                                                         t.state.total_steps, measured_from) if is_main() else None)
    return t.state.total_steps


def _expect_final_views(t: Training, logits: torch.Tensor) -> None:
    """Selective TTA under a time budget: the final evaluation is planned for the share of images this
    validation was unsure of (a short run's model is unsure of many more than a long one's)."""
    cfg = t.config
    if t.budget is None or t.budget.plan is None or not cfg.tta or cfg.tta_confidence is None or not len(logits):
        return
    views = len(tta_views(cfg.flip, cfg.translate, cfg.tta_translate))
    unsure = (t.task.confidence(t.task.probabilities(logits)) < cfg.tta_confidence).float().mean().item()
    t.budget.expect_views(1 + (views - 1) * unsure)


def gathered(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's part of an evaluation, in rank order (the split's order): the same on every rank."""
    if not dist.active():
        return logits, targets
    parts = dist.gather((logits, targets))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _check_finite(t: Training, row: dict[str, Any], epoch: int) -> None:
    """Weights or a validation loss that are NaN or infinite stop the run before anything of this
    epoch is written (a finite training loss does not prove finite weights after the last step)."""
    broken = [name for name, p in [*t.model.named_parameters(), *t.model.named_buffers()]  # batch-norm statistics
              if p.is_floating_point() and not torch.isfinite(p).all()]  # too: eval-mode outputs read them
    val_broken = t.val_loader is not None and not math.isfinite(row["val_loss"])
    if not broken and not val_broken:
        return
    params = {name for name, _ in t.model.named_parameters()}
    kind = "weights" if any(name in params for name in broken) else "batch-norm statistics"
    what = f"{kind} ({', '.join(broken[:3])})" if broken else f"validation loss ({row['val_loss']})"
    # the peak rate: the epoch's last one is 0 at the end of a one-cycle or cosine schedule
    peak = t.config.lr if t.config.lr is not None else row["lr"]
    raise TrainingError(f"the model's {what} became non-finite in epoch {epoch + 1} (peak lr {peak:.3g}); "
                        f"stopped without saving it: {t.run_dir / 'weights'} keeps the last good epoch. "
                        f"Try a lower --lr, --grad-clip, or --precision fp32.")


def _save(t: Training, row: dict[str, Any], meta: dict[str, Any], improved: bool, hooks: Hooks) -> None:
    weights_dir = t.run_dir / "weights"
    save_weights(weights_dir / "last.safetensors", t.model, meta)
    save_state(weights_dir / "state.pt", state_dict(t.state, t.model, t.optimizer, t.lookahead))
    if improved:
        save_weights(weights_dir / "best.safetensors", t.model, meta)
    write_metrics_csv(t.run_dir / "metrics.csv", t.state.history, t.task.columns)
    if hooks.writer is not None:
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", *t.task.columns, "lr"):
            hooks.writer.add_scalar(key, row[key], row["epoch"])
        hooks.writer.flush()


def _print_epoch(row: dict[str, Any], epochs: int, validated: bool, score: str) -> None:
    val = f", val_loss {row['val_loss']:.4f}, val_acc {row['val_acc']:.4f}" if validated else ""
    if validated and score != "val_acc":
        val += f", {score} {row[score]:.4f}"
    print(f"epoch {row['epoch']}/{epochs}: train_loss {row['train_loss']:.4f}, train_acc {row['train_acc']:.4f}"
          f"{val}, {row['images_per_s']:.0f} img/s, {row['seconds']:.1f}s", file=sys.stderr, flush=True)


def progress_mode(setting: str) -> str:
    """``auto``: a bar when stderr is a terminal; one line per epoch when it goes to a file or a pipe,
    where a bar would write every update (thousands of carriage-return lines)."""
    if setting != "auto":
        return setting
    return "bar" if sys.stderr.isatty() else "lines"


def _progress(iterable: Any, total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=False,
                dynamic_ncols=True, bar_format="{desc} {percentage:3.0f}%|{bar:20}| {n}/{total} "
                "[{elapsed}<{remaining}{postfix}]")
