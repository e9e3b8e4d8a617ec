"""``--time-budget``: measure the first steps, then size the training (whole epochs and a partial
last one) so that training and the final evaluation end within the budget; the LR schedule is
laid over exactly those steps."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from recog.config import parse_duration  # noqa: F401  (re-exported)

def format_duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


@dataclass
class BudgetPlan:
    steps: int  # optimizer steps in all
    epochs: int  # epochs started (the last may be partial)
    step_s: float  # seconds per training step
    eval_image_s: float  # seconds per image of evaluation
    epoch_s: float  # one epoch: its steps and its validation
    final_eval_s: float
    setup_s: float  # already spent (model set-up, calibration, compilation)

    steps_per_epoch: int = 1
    margin_s: float = 0.0

    @property
    def epochs_exact(self) -> float:
        return self.steps / self.steps_per_epoch

    def describe(self, budget_s: float) -> str:
        return (f"time budget {format_duration(budget_s)}: {self.step_s * 1000:.0f} ms/step, "
                f"{self.eval_image_s * 1e6:.0f} us/image in evaluation, {self.epoch_s:.1f} s/epoch -> "
                f"{self.steps} steps = {self.epochs_exact:.2f} epochs "
                f"(~{self.epochs_exact * self.epoch_s:.0f} s training + "
                f"{self.final_eval_s:.0f} s final evaluation + {self.setup_s:.0f} s set-up)")


@torch.no_grad()
def _time_eval(model: nn.Module, x: torch.Tensor, autocast: Callable[[], object], repeats: int = 3) -> float:
    """Seconds per image of evaluation: the fastest of ``repeats`` batches after a warm-up (the
    evaluation runs thousands of batches, so a one-off stall should not size the budget)."""
    was_training = model.training
    model.eval()
    times = []
    with autocast():
        model(x)  # warm-up (and compilation of the eval graph)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    model.train(was_training)
    return min(times) / len(x)


def _time_steps(step: Callable[[torch.Tensor, torch.Tensor], object],
                batches: Iterator[tuple[torch.Tensor, torch.Tensor]], steps: int) -> float:
    """Seconds per step over ``steps`` steps after one warm-up step."""
    step(*next(batches))
    start = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    return (time.perf_counter() - start) / steps


def _cycle(loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches again and again: an epoch of one or two batches still gives steps to time."""
    while True:
        yield from loader


def plan(
    budget_s: float,
    started: float,
    step: Callable[[torch.Tensor, torch.Tensor], object],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    steps_per_epoch: int,
    eval_batch: torch.Tensor,
    val_images: int,
    final_images: int,
    final_views: int,
    autocast: Callable[[], object],
    timed_steps: int = 2,
    freeze: Callable[[], Callable[[], None]] | None = None,
    freeze_step: int | None = None,
) -> tuple[BudgetPlan, list[str]]:
    """Time a few real steps (then undo them: weights, optimizer and RNG are restored) and the
    evaluation of one batch; return the plan and any warnings. The calibration is time taken from
    the budget, and the loop corrects the plan after every epoch with the step time it measured,
    so ``timed_steps`` (after one warm-up step) is small.

    ``freeze`` (with ``freeze_step``, e.g. airnet's whitening stem frozen after some epochs) freezes
    part of the model and returns the function that undoes it: the steps after ``freeze_step`` are
    timed separately, since they skip part of the backward pass."""
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(optimizer.state_dict())
    rng = torch.get_rng_state()
    batches = _cycle(train_batches)
    step_s = _time_steps(step, batches, timed_steps)
    frozen_step_s = step_s
    if freeze is not None and freeze_step is not None:
        undo = freeze()
        frozen_step_s = _time_steps(step, batches, max(1, timed_steps // 2))
        undo()
    eval_image_s = _time_eval(model, eval_batch, autocast)
    model.load_state_dict(saved_model)
    optimizer.load_state_dict(saved_opt)
    torch.set_rng_state(rng)
    setup_s = time.perf_counter() - started
    epoch_s = steps_per_epoch * step_s + val_images * eval_image_s
    final_eval_s = final_images * final_views * eval_image_s + 3.0  # + report and plots
    margin = 0.03 * budget_s
    # each step costs its own time and its share of the validation at the end of its epoch
    val_share = val_images * eval_image_s / steps_per_epoch
    available = budget_s - setup_s - final_eval_s - margin
    before = freeze_step if freeze_step is not None else math.inf
    if available <= before * (step_s + val_share):
        steps = math.floor(available / (step_s + val_share))
    else:
        steps = before + math.floor((available - before * (step_s + val_share)) / (frozen_step_s + val_share))
    warnings = []
    if steps < min(steps_per_epoch, 10):
        steps = min(steps_per_epoch, 10)
        warnings.append(f"the time budget {format_duration(budget_s)} is too small for this data and model "
                        f"(one epoch ~{epoch_s:.0f} s plus {final_eval_s:.0f} s evaluation); "
                        f"training {steps} steps")
    epochs = math.ceil(steps / steps_per_epoch)
    return BudgetPlan(steps, epochs, step_s, eval_image_s, epoch_s, final_eval_s, setup_s, steps_per_epoch,
                      margin), warnings


def steps_left(deadline: float, step_s: float, val_s: float, steps_per_epoch: int) -> int:
    """Steps that still fit before ``deadline`` (a ``time.perf_counter`` time) at ``step_s`` per step
    plus each step's share of a ``val_s`` validation per epoch: how the loop re-plans after each epoch
    with the step time it measured (the first steps, timed before training, run slower)."""
    return max(0, math.floor((deadline - time.perf_counter()) / (step_s + val_s / steps_per_epoch)))
