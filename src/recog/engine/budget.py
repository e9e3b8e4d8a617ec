"""``--time-budget``: measure the first steps, then size the training (whole epochs and a partial
last one) so that training and the final evaluation end within the budget; the LR schedule is
laid over exactly those steps. The loop holds the :class:`Budget` and asks it after each epoch how
many steps still fit, from the step time that epoch measured.

The arithmetic (:func:`size_steps`, :meth:`Budget.replan`) is separate from the timing, so it is
tested with given step times and an injected clock.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from recog.data.loader import cycle
from recog.device import eval_mode
from recog.engine.schedule import phase_ends


_counted_from: float | None = None  # the command line's start (set by ``recog train``): a budget counts from it


@contextlib.contextmanager
def counting_from_process_start() -> Iterator[None]:
    """A time budget is wall time from the command's start to its exit: ``recog train`` runs inside
    this, so that the interpreter's start and the imports before it are inside the budget (a run that
    fails before it counts leaves nothing behind for the next run in the process)."""
    global _counted_from
    _counted_from = time.perf_counter() - process_age()
    try:
        yield
    finally:
        _counted_from = None


def budget_start() -> float:
    """When a budget starts counting, on the :func:`time.perf_counter` clock: the command's start when
    it said so (once: the next run in this process, e.g. through the API, counts from its own call),
    else now (``recog.train`` called in a long-running process)."""
    global _counted_from
    started, _counted_from = _counted_from, None
    return started if started is not None else time.perf_counter()


def process_age() -> float:
    """Seconds since this process started (Linux: from /proc; 0 where that cannot be read)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        import os

        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def expected_views(views: int, confidence: float | None) -> float:
    """The views per image a final evaluation is planned for: all of them, or with selective TTA
    (``confidence``) the plain one plus the others for :data:`UNSURE_SHARE` of the images."""
    return views if confidence is None or views <= 1 else 1 + (views - 1) * UNSURE_SHARE


# selective TTA at 0.6 confidence, the fast recipe on CIFAR-10 (benchmarks/README.md): 17% of the test
# images were unsure after 8 epochs; a shorter (budgeted) run is less sure, so the plan assumes more
UNSURE_SHARE = 0.3
CALIBRATION_SHARE = 0.01  # of the budget: the calibration times up to 5 steps within it (2 at least)


def final_eval_seconds(images: int, views: float, eval_image_s: float) -> float:
    """The final evaluation: ``images`` x ``views`` forwards, plus 3 s for the report and its plots."""
    return images * views * eval_image_s + 3.0


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
    size_step_s: tuple[float, ...] = ()  # progressive resizing: a step at each smaller size, smallest first


@dataclass(frozen=True)
class BudgetPlan:
    steps: int  # optimizer steps in all
    epochs: int  # epochs started (the last may be partial)
    timings: Timings
    epoch_s: float  # one epoch: its steps and its validation
    final_eval_s: float
    steps_per_epoch: int = 1
    margin_s: float = 0.0
    freeze_step: int | None = None  # steps from here on cost ``frozen_step_s`` (in proportion, at every size)
    resize_until: float = 0.5  # progressive resizing: where the smaller sizes' phases end (a fraction)
    final_images: int = 0  # the final evaluation's images

    @property
    def epochs_exact(self) -> float:
        return self.steps / self.steps_per_epoch

    def seconds(self, first: int, last: int, total: int) -> float:
        """The modelled time of steps ``first`` to ``last`` (exclusive) of a run of ``total`` steps."""
        return train_seconds(self.timings, first, last, total, self.freeze_step, self.resize_until)

    def describe(self, budget_s: float) -> str:
        t = self.timings
        return (f"time budget {format_duration(budget_s)}: {t.step_s * 1000:.0f} ms/step, "
                f"{t.eval_image_s * 1e6:.0f} us/image in evaluation, {self.epoch_s:.1f} s/epoch -> "
                f"{self.steps} steps = {self.epochs_exact:.2f} epochs "
                f"(~{self.epochs_exact * self.epoch_s:.0f} s training + "
                f"{self.final_eval_s:.0f} s final evaluation + {t.setup_s:.0f} s set-up)")


def train_seconds(timings: Timings, first: int, last: int, total: int, freeze_step: int | None = None,
                  resize_until: float = 0.5) -> float:
    """Seconds of steps ``first`` to ``last`` (exclusive) of a run of ``total`` steps: each phase of
    progressive resizing at its size's step time, and steps after ``freeze_step`` cheaper in the
    proportion measured at the full size."""
    costs = [*timings.size_step_s, timings.step_s]
    frozen = (timings.frozen_step_s or timings.step_s) / timings.step_s
    freeze = math.inf if freeze_step is None else freeze_step
    seconds, start = 0.0, 0
    for end, cost in zip(phase_ends(total, len(costs), resize_until), costs):
        a, b = max(first, start), min(last, end)
        if b > a:
            warm = max(0, min(b, freeze) - a)  # steps before the freeze
            seconds += cost * (warm + frozen * (b - a - warm))
        start = end
    return seconds


def fitting_steps(seconds: float, cost: Callable[[int], float], lowest: int = 0) -> int:
    """The largest total of steps ``n >= lowest`` whose ``cost(n)`` (growing with n) fits ``seconds``
    (``lowest`` when none does)."""
    hi = lowest + 1
    while cost(hi) <= seconds and hi < 1 << 40:
        hi *= 2
    lo = lowest
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= seconds else (lo, mid)
    return lo


def size_steps(budget_s: float, timings: Timings, steps_per_epoch: int, val_images: int, final_images: int,
               final_views: float = 1, freeze_step: int | None = None,
               resize_until: float = 0.5) -> tuple[BudgetPlan, list[str]]:
    """The steps that fit the budget after set-up, each step paying its share of the validation at
    the end of its epoch, and the final evaluation (``final_views`` with test-time augmentation);
    3% is kept as a margin. Steps after ``freeze_step`` cost ``frozen_step_s``; with progressive
    resizing each phase costs its size's step (the phases stretch with the steps: the sum is solved for)."""
    step_s, eval_image_s = timings.step_s, timings.eval_image_s
    epoch_s = steps_per_epoch * step_s + val_images * eval_image_s
    final_eval_s = final_eval_seconds(final_images, final_views, eval_image_s)
    margin = 0.03 * budget_s
    val_share = val_images * eval_image_s / steps_per_epoch
    available = budget_s - timings.setup_s - final_eval_s - margin
    steps = fitting_steps(available, lambda n: train_seconds(timings, 0, n, n, freeze_step, resize_until)
                          + n * val_share)
    warnings = []
    if steps < min(steps_per_epoch, 10):
        steps = min(steps_per_epoch, 10)
        warnings.append(f"the time budget {format_duration(budget_s)} is too small for this data and model "
                        f"(one epoch ~{epoch_s:.0f} s plus {final_eval_s:.0f} s evaluation); "
                        f"training {steps} steps")
    epochs = math.ceil(steps / steps_per_epoch)
    return BudgetPlan(steps, epochs, timings, epoch_s, final_eval_s, steps_per_epoch, margin, freeze_step,
                      resize_until, final_images), warnings


class Budget:
    """A time budget, held by the loop: :meth:`calibrate` before training sizes the plan and sets
    the deadline; :meth:`replan` after each epoch says how many steps fit from then on."""

    def __init__(self, seconds: float, started: float, verbose: bool = True,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.seconds, self.started, self.verbose, self.clock = seconds, started, verbose, clock
        self.plan: BudgetPlan | None = None
        self.first: BudgetPlan | None = None
        self.deadline: float | None = None

    def adopt(self, plan: BudgetPlan, warnings: list[str] = ()) -> int:
        """Take ``plan``: the deadline leaves time for the final evaluation and the margin."""
        self.plan = plan
        self.first = self.first or plan  # the first plan: the summary compares its estimate with the run
        self.deadline = self.started + self.seconds - plan.final_eval_s - plan.margin_s
        if self.verbose:
            for w in warnings:
                print(f"warning: {w}", file=sys.stderr)
            print(plan.describe(self.seconds), file=sys.stderr)
        return plan.steps

    def calibrate(self, step: Callable[[tuple], object], model: nn.Module, optimizer: torch.optim.Optimizer,
                  train_batches: Iterable[tuple], eval_batch: torch.Tensor, autocast: Callable[[], object],
                  sizes: dict[str, int], freeze: Callable[[], Callable[[], None]] | None = None,
                  freeze_step: int | None = None, timed_steps: int = 2, eval_image_s: float | None = None,
                  train_sizes: Sequence[int] = (), resize_until: float = 0.5) -> int:
        """Time a few real steps (then undo them: weights, optimizer and RNG are restored) and the
        evaluation of one batch; adopt the plan and return its steps. ``sizes``: steps_per_epoch,
        val_images, final_images, final_views. ``freeze`` freezes part of the model (e.g. airnet's
        whitening stem after ``freeze_step``) and returns its undo: those steps are timed apart.
        ``eval_image_s``: the evaluation's time per image when already measured. ``train_sizes``:
        progressive resizing's smaller sizes, each timed (``step`` is a :class:`Stepper`)."""
        saved_model = copy.deepcopy(model.state_dict())
        saved_opt = copy.deepcopy(optimizer.state_dict())
        rng = torch.get_rng_state()
        batches = cycle(train_batches)
        spend = CALIBRATION_SHARE * self.seconds  # more timed steps where they cost little of the budget
        size_step_s = []
        for size in train_sizes:
            step.set_size(size)
            size_step_s.append(time_steps(step, batches, timed_steps, spend))
        if train_sizes:
            step.set_size(None)
        step_s = time_steps(step, batches, timed_steps, spend)
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
        timings = Timings(step_s, eval_image_s, self.clock() - self.started, frozen_step_s, tuple(size_step_s))
        return self.adopt(*size_steps(self.seconds, timings, freeze_step=freeze_step, resize_until=resize_until,
                                      **sizes))

    def expect_views(self, views: float) -> None:
        """The final evaluation planned again for ``views`` per image (selective TTA: the share of unsure
        images the last validation measured); the deadline for training moves with it."""
        plan = self.plan
        final = final_eval_seconds(plan.final_images, views, plan.timings.eval_image_s)
        self.plan = dataclasses.replace(plan, final_eval_s=final)
        self.deadline = self.started + self.seconds - final - plan.margin_s

    def replan(self, steps_done: int, step_s: float, val_s: float, steps_per_epoch: int, planned: int,
               measured_from: int | None = None) -> int:
        """The total of steps that fits before the deadline, from the step time measured over steps
        ``measured_from`` to ``steps_done`` (default: the last one): the plan's model of the remaining
        steps (their sizes, the frozen stem) scaled by how far the measurement is from it, plus each
        step's share of a ``val_s`` validation per epoch; at least one more step."""
        plan = self.plan
        first = steps_done - 1 if measured_from is None else measured_from
        modelled = plan.seconds(first, steps_done, planned) / max(1, steps_done - first)
        drift = step_s / modelled if modelled > 0 else 1.0
        left = self.deadline - self.clock()
        steps = fitting_steps(left, lambda n: drift * plan.seconds(steps_done, n, n)
                              + (n - steps_done) * val_s / steps_per_epoch, lowest=steps_done + 1)
        if abs(steps - planned) > 0.02 * planned and self.verbose:  # said when the plan moves, not every epoch
            print(f"time budget: {step_s * 1000:.0f} ms/step measured -> {steps} steps in all "
                  f"({steps / steps_per_epoch:.2f} epochs; planned {planned})", file=sys.stderr)
        return steps

    def spent(self, steps: int = 0, train_s: float = 0.0, total: int | None = None) -> str:
        """What the run took of the budget; with the ``steps`` run in ``train_s`` seconds (of a run of
        ``total``), the first plan's step time beside the measured one, so that drift is visible."""
        line = (f"training and evaluation took {format_duration(self.clock() - self.started)} of the "
                f"{format_duration(self.seconds)} budget")
        if self.first is None or steps < 1:
            return line
        estimate = self.first.seconds(0, steps, total or steps) / steps
        measured = train_s / steps
        return (f"{line}; step time: {estimate * 1000:.0f} ms first estimate, {measured * 1000:.0f} ms measured "
                f"({measured / estimate - 1:+.0%})")


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


def time_steps(step: Callable[[tuple], object], batches: Iterator[tuple], steps: int, spend: float = 0.0,
               most: int = 5) -> float:
    """Seconds per step after one warm-up step, batch included: the median of ``steps`` steps, and of
    more (up to ``most``) while they take at most ``spend`` seconds in all. On a shared machine a
    stall of a second or two fell on both of two timed steps and put a plan 30–40% off."""
    step(next(batches))
    times: list[float] = []
    while len(times) < max(1, steps) or (len(times) < most and sum(times) * (1 + 1 / len(times)) <= spend):
        start = time.perf_counter()
        step(next(batches))
        times.append(time.perf_counter() - start)
    return statistics.median(times)

