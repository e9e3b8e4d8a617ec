"""Transfer by partial fine-tune: the backbone's first stages stay frozen and run once per image and
view (their activations cached on disk, as the probe's features are); the last ``unfreeze`` stages
and the head train on those activations.

On a 2-core CPU this is what makes fine-tuning affordable: a frozen Lite0's forward runs at ~85
images/s in bf16, a full training step at 14-18, while training the last two stages (7x7 maps) on
cached activations runs at several hundred. The head starts from the linear probe's fit (the probe's
L2 logistic regression on the tail's pooled features: "linear probe, then fine-tune", which keeps the
pretrained features from being distorted by a random head's first gradients); batch-norm statistics
stay frozen (the few images of a small set would move them more than the weights do); the tail's
stages learn at ``backbone_lr_scale`` of the head's rate. Each epoch sees every training image once,
in one of its cached views (as it is or mirrored). The weights saved are the last epoch's (the
validation split only reports: on sets whose val split is the final report's, choosing an epoch on it
would report a choice made on it).

With a time budget the epochs are sized after the feature pass, from tail steps timed on the cached
activations, to end with the final evaluation inside the budget.
"""

from __future__ import annotations

import copy
import math
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from recog.device import autocast, eval_mode
from recog.engine.budget import BudgetPlan, Timings, expected_views, final_eval_seconds, time_eval, time_steps
from recog.engine.checkpoint import LoopState
from recog.engine.distributed import is_main
from recog.engine.optim import make_optimizer, optimizer_options
from recog.engine.probe import _parts, feature_pass, fit_linear
from recog.engine.schedule import lr_at
from recog.errors import TrainingError
from recog.models import head, headless
from recog.models.split import split_model

if TYPE_CHECKING:
    from collections.abc import Iterator

    from recog.engine.build import Training
    from recog.engine.fit import Hooks

CHUNK = 256  # activations run through the tail in chunks of this many (evaluation, pooled features)
CALIBRATION_STEPS = 5  # a budget's timing of the tail's step: the median of five after a warm-up (a median
#                        of two moved with one stall)


def stage_label(unfreeze: int) -> str:
    return f"stage-{unfreeze}"


def fit_partial(training: Training, hooks: Hooks | None = None) -> LoopState:
    """Train the tail (the last ``config.unfreeze`` stages and the head) on cached activations of the
    frozen trunk; one metrics row per epoch; weights and loop state as :func:`recog.engine.fit.fit`
    writes them. A resumed run whose epochs are done owes only its report; one stopped part-way
    starts its epochs again from the pretrained weights (the tail trains in seconds to minutes)."""
    from recog.engine.fit import Hooks, _print_epoch, _save

    t, cfg, hooks = training, training.config, hooks or Hooks()
    if t.state.epoch >= 1 and t.state.finished:
        return t.state
    show = cfg.verbose and is_main()
    trunk, tail = split_model(t.model, cfg.unfreeze)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32  # as the trunk computes them
    acts = feature_pass(t, trunk, _parts(t, stage_label(cfg.unfreeze)), dtype=dtype)
    fwd_s = _forward_s_per_image(t)
    train = [acts[k] for k in sorted(acts) if k.startswith("train:")]  # per view: (n, C, H, W)
    val = acts.get("val:plain")
    name, layer = head(t.model)

    # ---- the head: the linear probe's fit on the tail's pooled features (as pretrained) -------------
    with headless(t.model):
        pooled = torch.cat([_run(t, tail, a, dtype).float() for a in train])
    fit_linear(t, pooled, layer)
    del pooled

    # ---- the tail trains: trunk frozen, batch-norm statistics frozen ----------------------------------
    for p in trunk.parameters():
        p.requires_grad_(False)
    for p in tail.parameters():
        p.requires_grad_(True)
    t.optimizer = make_optimizer(t.model, **optimizer_options(cfg), head=name)
    n, batch = len(t.data.train), min(cfg.batch_size, len(t.data.train))
    spe = math.ceil(n / batch)
    epochs = _epochs(t, tail, train, batch, spe, fwd_s, dtype)
    state = t.state = LoopState()
    state.total_steps, state.steps_per_epoch = epochs * spe, spe
    labels = t.data.train.labels
    generator = torch.Generator().manual_seed(cfg.seed)
    lr = 0.0
    for epoch in range(epochs):
        started = time.perf_counter()
        _train_mode(tail)
        order = torch.randperm(n, generator=generator)
        view = torch.randint(len(train), (n,), generator=generator)
        loss_sum, correct = 0.0, 0
        for step in range(spe):
            x, y = _batch(train, labels, order[step * batch:(step + 1) * batch], view, t.device, dtype)
            lr = lr_at(epoch * spe + step, state.total_steps, cfg.lr, cfg.schedule, 0, cfg.final_lr)
            for group in t.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss, hits = _step(t, tail, x, y, f"epoch {epoch + 1}, step {step + 1} (lr {lr:.3g})")
            loss_sum += loss * len(y)
            correct += hits
        seconds = time.perf_counter() - started
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / n, "train_acc": correct / n,
                               "val_loss": math.nan, "val_acc": math.nan, **{c: math.nan for c in t.task.columns},
                               "lr": lr, "train_seconds": seconds}
        extra: dict[str, Any] = {}
        if val is not None:
            metrics, extra = t.task.validate(_run(t, tail, val, dtype).float(), t.data.val.labels)
            row.update(metrics)
        row["seconds"] = time.perf_counter() - started
        row["images_per_s"] = n / max(seconds, 1e-9)
        state.history.append(row)
        state.epoch = state.best_epoch = epoch + 1
        state.best_score = row.get(t.task.score, math.nan)
        if is_main():
            _save(t, row, {**t.meta, **extra, "epoch": epoch + 1}, True, hooks)  # the last epoch's is the best
            if show:
                _print_epoch(row, epochs, val is not None, t.task.score)
        if hooks.on_epoch_end is not None and hooks.on_epoch_end(dict(row, model=t.model, score=state.best_score)):
            state.stopped_early = epoch + 1 < epochs
            break
    for p in t.model.parameters():
        p.requires_grad_(True)
    return state


def _step(t: Training, tail: nn.Module, x: torch.Tensor, y: torch.Tensor, where: str) -> tuple[float, int]:
    """One step of the tail (forward, loss, backward, update): the step's loss and hits. The loop and
    the budget's timing of it both run this, so that the first estimate times what the loop does."""
    with autocast(t.device, t.config.precision):
        out = tail(x)
    loss = t.task.loss(out, y)
    value = loss.item()
    if not math.isfinite(value):
        raise TrainingError(f"loss became {value} at {where} of the partial fine-tune; try a lower --lr")
    t.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t.optimizer.step()
    hits, _ = t.task.hits(out.detach(), y)
    return value, int(hits)


def _batch(train: list[torch.Tensor], labels: torch.Tensor, idx: torch.Tensor, view: torch.Tensor,
           device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A step's cached activations and labels: each image ``idx`` in the view ``view[idx]`` drew (one
    indexing per view, not per image)."""
    drawn = view[idx]
    parts = [(train[v][idx[drawn == v]], labels[idx[drawn == v]]) for v in range(len(train))]
    x = torch.cat([p[0] for p in parts]).to(device, dtype)
    return x, torch.cat([p[1] for p in parts]).to(device)


@torch.no_grad()
def _run(t: Training, tail: nn.Module, acts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The tail's outputs (eval mode) for cached activations, in chunks."""
    out = []
    with eval_mode(tail), autocast(t.device, t.config.precision):
        for i in range(0, len(acts), CHUNK):
            out.append(tail(acts[i:i + CHUNK].to(t.device, dtype)).cpu())
    return torch.cat(out)


def _train_mode(tail: nn.Module) -> None:
    """Training mode (dropout) with every batch-norm layer's statistics frozen."""
    tail.train()
    for m in tail.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _forward_s_per_image(t: Training) -> float | None:
    """Seconds per image of the whole model's forward (the final evaluation's cost), timed on a few
    images at the run's size; None without a time budget (nothing to size)."""
    if t.budget is None:
        return None
    x = torch.zeros(8, t.data.channels, t.data.image_size, t.data.image_size, device=t.device)
    if t.config.channels_last:
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        return time_eval(t.model, x, lambda: autocast(t.device, t.config.precision))


def _epochs(t: Training, tail: nn.Module, train: list[torch.Tensor], batch: int, spe: int,
            fwd_s: float | None, dtype: torch.dtype) -> int:
    """The epochs to train: the config's; with a time budget, as many of them as fit what is left of it
    after the final evaluation (tail steps timed here and undone)."""
    cfg = t.config
    epochs = max(1, cfg.epochs or 1)
    if t.budget is None:
        return epochs
    saved = {k: v.detach().clone() for k, v in tail.state_dict().items()}
    saved_opt = copy.deepcopy(t.optimizer.state_dict())
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    n = len(t.data.train)
    _train_mode(tail)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:  # the loop's own batches, gathered from the cache (inside the timing, as in the loop)
            idx = torch.randperm(n, generator=generator)[:batch]
            yield _batch(train, t.data.train.labels, idx, torch.randint(len(train), (n,), generator=generator),
                         t.device, dtype)

    # the loop's own step; the warm-up step builds the optimizer's state
    step_s = time_steps(lambda xy: _step(t, tail, *xy, "the budget's timing step"), batches(), CALIBRATION_STEPS)
    t.optimizer.zero_grad(set_to_none=True)
    tail.load_state_dict(saved)
    t.optimizer.load_state_dict(saved_opt)
    val_s = len(t.data.val or ()) * step_s / batch / 3  # a forward is about a third of a step
    final = len(t.data.eval_split[1]) if t.data.eval_split else 0
    final_s = final_eval_seconds(final, expected_views(2 if cfg.tta else 1, cfg.tta_confidence), fwd_s or 0.0)
    left = t.budget.started + t.budget.seconds * 0.97 - time.perf_counter() - final_s
    fit = int(left // (spe * step_s + val_s))
    chosen = max(1, min(epochs, fit))
    timings = Timings(step_s, (fwd_s or 0.0), time.perf_counter() - t.budget.started)
    t.budget.adopt(BudgetPlan(chosen * spe, chosen, timings, spe * step_s + val_s, final_s, spe,
                              0.03 * t.budget.seconds))  # the run's summary compares its step time with this
    return chosen
