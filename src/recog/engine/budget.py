"""``--time-budget``: measure the first steps, then size the training (whole epochs and a partial
last one) so that training and the final evaluation end within the budget; the LR schedule is
laid over exactly those steps. The loop holds the :class:`Budget` and asks it after each epoch how
many steps still fit, from the step time that epoch measured.

The arithmetic (:func:`size_steps`, :meth:`Budget.replan`) is separate from the timing, so it is
tested with given step times and an injected clock.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from recog.data.loader import cycle
from recog.device import eval_mode


def format_duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


@dataclass(frozen=True)
class Timings:
    """What calibration measured (or a test gives)."""

    step_s: float  # seconds per training step
    eval_image_s: float  # seconds per image of evaluation
    setup_s: float  # already spent (model set-up, calibration, compilation)
    frozen_step_s: float | None = None  # a step once the stem is frozen (backward stops earlier)


@dataclass(frozen=True)
class BudgetPlan:
    steps: int  # optimizer steps in all
    epochs: int  # epochs started (the last may be partial)
    timings: Timings
    epoch_s: float  # one epoch: its steps and its validation
    final_eval_s: float
    steps_per_epoch: int = 1
    margin_s: float = 0.0

    @property
    def epochs_exact(self) -> float:
        return self.steps / self.steps_per_epoch

    def describe(self, budget_s: float) -> str:
        t = self.timings
        return (f"time budget {format_duration(budget_s)}: {t.step_s * 1000:.0f} ms/step, "
                f"{t.eval_image_s * 1e6:.0f} us/image in evaluation, {self.epoch_s:.1f} s/epoch -> "
                f"{self.steps} steps = {self.epochs_exact:.2f} epochs "
                f"(~{self.epochs_exact * self.epoch_s:.0f} s training + "
                f"{self.final_eval_s:.0f} s final evaluation + {t.setup_s:.0f} s set-up)")


def size_steps(budget_s: float, timings: Timings, steps_per_epoch: int, val_images: int, final_images: int,
               final_views: int = 1, freeze_step: int | None = None) -> tuple[BudgetPlan, list[str]]:
    """The steps that fit the budget after set-up, each step paying its share of the validation at
    the end of its epoch, and the final evaluation (``final_views`` with test-time augmentation);
    3% is kept as a margin. Steps after ``freeze_step`` cost ``frozen_step_s``."""
    step_s, eval_image_s = timings.step_s, timings.eval_image_s
    frozen_step_s = timings.frozen_step_s or step_s
    epoch_s = steps_per_epoch * step_s + val_images * eval_image_s
    final_eval_s = final_images * final_views * eval_image_s + 3.0  # + report and plots
    margin = 0.03 * budget_s
    val_share = val_images * eval_image_s / steps_per_epoch
    available = budget_s - timings.setup_s - final_eval_s - margin
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
    return BudgetPlan(steps, epochs, timings, epoch_s, final_eval_s, steps_per_epoch, margin), warnings


class Budget:
    """A time budget, held by the loop: :meth:`calibrate` before training sizes the plan and sets
    the deadline; :meth:`replan` after each epoch says how many steps fit from then on."""

    def __init__(self, seconds: float, started: float, verbose: bool = True,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.seconds, self.started, self.verbose, self.clock = seconds, started, verbose, clock
        self.plan: BudgetPlan | None = None
        self.deadline: float | None = None

    def adopt(self, plan: BudgetPlan, warnings: list[str] = ()) -> int:
        """Take ``plan``: the deadline leaves time for the final evaluation and the margin."""
        self.plan = plan
        self.deadline = self.started + self.seconds - plan.final_eval_s - plan.margin_s
        if self.verbose:
            for w in warnings:
                print(f"warning: {w}", file=sys.stderr)
            print(plan.describe(self.seconds), file=sys.stderr)
        return plan.steps

    def calibrate(self, step: Callable[[tuple], object], model: nn.Module, optimizer: torch.optim.Optimizer,
                  train_batches: Iterable[tuple], eval_batch: torch.Tensor, autocast: Callable[[], object],
                  sizes: dict[str, int], freeze: Callable[[], Callable[[], None]] | None = None,
                  freeze_step: int | None = None, timed_steps: int = 2, eval_image_s: float | None = None) -> int:
        """Time a few real steps (then undo them: weights, optimizer and RNG are restored) and the
        evaluation of one batch; adopt the plan and return its steps. ``sizes``: steps_per_epoch,
        val_images, final_images, final_views. ``freeze`` freezes part of the model (e.g. airnet's
        whitening stem after ``freeze_step``) and returns its undo: those steps are timed apart.
        ``eval_image_s``: the evaluation's time per image when already measured."""
        saved_model = copy.deepcopy(model.state_dict())
        saved_opt = copy.deepcopy(optimizer.state_dict())
        rng = torch.get_rng_state()
        batches = cycle(train_batches)
        step_s = time_steps(step, batches, timed_steps)
        frozen_step_s = None
        if freeze is not None and freeze_step is not None:
            undo = freeze()
            frozen_step_s = time_steps(step, batches, max(1, timed_steps // 2))
            undo()
        if eval_image_s is None:
            eval_image_s = time_eval(model, eval_batch, autocast)
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_opt)
        torch.set_rng_state(rng)
        timings = Timings(step_s, eval_image_s, self.clock() - self.started, frozen_step_s)
        return self.adopt(*size_steps(self.seconds, timings, freeze_step=freeze_step, **sizes))

    def replan(self, steps_done: int, step_s: float, val_s: float, steps_per_epoch: int, planned: int) -> int:
        """After an epoch: the total of steps that fits before the deadline at the measured ``step_s``
        plus each step's share of a ``val_s`` validation per epoch (the first steps, timed before
        training, run slower); at least one more step."""
        left = max(0, math.floor((self.deadline - self.clock()) / (step_s + val_s / steps_per_epoch)))
        steps = max(steps_done + 1, steps_done + left)
        if abs(steps - planned) > 0.02 * planned and self.verbose:  # said when the plan moves, not every epoch
            print(f"time budget: {step_s * 1000:.0f} ms/step measured -> {steps} steps in all "
                  f"({steps / steps_per_epoch:.2f} epochs; planned {planned})", file=sys.stderr)
        return steps

    def spent(self) -> str:
        return f"training and evaluation took {format_duration(self.clock() - self.started)} of the " \
               f"{format_duration(self.seconds)} budget"


@torch.no_grad()
def time_eval(model: nn.Module, x: torch.Tensor, autocast: Callable[[], object], repeats: int = 3) -> float:
    """Seconds per image of evaluation: the fastest of ``repeats`` batches after a warm-up (the
    evaluation runs thousands of batches, so a one-off stall should not size the budget)."""
    times = []
    with eval_mode(model), autocast():
        model(x)  # warm-up (and compilation of the eval graph)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return min(times) / len(x)


def time_steps(step: Callable[[tuple], object], batches: Iterator[tuple], steps: int) -> float:
    """Seconds per step over ``steps`` steps after one warm-up step."""
    step(next(batches))
    start = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    return (time.perf_counter() - start) / steps

