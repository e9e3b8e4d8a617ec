"""Learning-rate schedules as a pure function of the step: easy to test, resume and plot."""

from __future__ import annotations

import math


def lr_at(
    step: int,
    total_steps: int,
    base_lr: float,
    schedule: str = "onecycle",
    warmup_steps: int | None = None,
    final_lr: float = 0.0,
) -> float:
    """Learning rate for optimizer ``step`` (0-based) of ``total_steps``.

    Every schedule warms up linearly over ``warmup_steps`` (default: 30% of training for
    ``onecycle``, none for the others), then: ``onecycle`` and ``linear`` fall linearly,
    ``cosine`` follows half a cosine, to ``final_lr * base_lr`` at the last step;
    ``constant`` stays at ``base_lr``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if warmup_steps is None:
        warmup_steps = int(0.3 * total_steps) if schedule == "onecycle" else 0
    warmup_steps = min(warmup_steps, total_steps - 1)
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return base_lr
    span = max(1, total_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    end = final_lr * base_lr
    if schedule in ("onecycle", "linear"):
        return base_lr + (end - base_lr) * progress
    if schedule == "cosine":
        return end + (base_lr - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")


def epochs_to_steps(epochs: float | None, steps_per_epoch: int) -> int | None:
    """The step at which a point given in (fractional) epochs falls, e.g. ``--warmup-epochs 0.5``
    or ``--freeze-stem-epochs 1.5``; None stays None."""
    return None if epochs is None else round(epochs * steps_per_epoch)
