"""Learning-rate schedules as a pure function of the step: easy to test, resume and plot."""

from __future__ import annotations

import math
from typing import Any


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


# ---- progressive resizing -----------------------------------------------------------------------

RESIZE_STEPS = 8  # a ramp grows in eighths of the full size (4 px at 32 px)
RESIZE_SMALLEST = 16  # px: no smaller training size (8-px digits are not resized)


def resize_sizes(full: int, start: float | None, multiple: int = 1) -> list[int]:
    """The training sizes of progressive resizing (``resize_from``): from ``start`` x ``full`` in steps of
    an eighth of ``full``, each a multiple of ``multiple`` (a strided stem's patch) and at least
    :data:`RESIZE_SMALLEST` px, the full size last. ``start`` None or 1: just the full size."""
    if start is None or start >= 1:
        return [full]
    sizes = []
    for k in range(RESIZE_STEPS):
        fraction = start + k / RESIZE_STEPS
        if fraction >= 1 - 1e-9:
            break
        size = max(multiple, round(full * fraction / multiple) * multiple)
        if RESIZE_SMALLEST <= size < full and size not in sizes:
            sizes.append(size)
    return [*sizes, full]


def training_sizes(cfg: Any) -> list[int]:
    """:func:`resize_sizes` of a resolved config (``TrainConfig``): its image size, ``resize_from`` and
    airnet's stem stride (the patch each size must be a multiple of)."""
    return resize_sizes(cfg.image_size, cfg.resize_from, int(cfg.model_args.get("stem_stride", 1)))


def phase_ends(total_steps: int, phases: int, until: float) -> list[int]:
    """The step at which each of ``phases`` ends: the smaller sizes share the first ``until`` of the
    ``total_steps`` equally, the last (full size) runs to the end."""
    if phases <= 1:
        return [total_steps]
    ramp = until * total_steps
    return [round(ramp * (i + 1) / (phases - 1)) for i in range(phases - 1)] + [total_steps]


def size_at(step: int, total_steps: int, sizes: list[int], until: float) -> int:
    """The training size at optimizer ``step`` (0-based) of ``total_steps``."""
    for end, size in zip(phase_ends(total_steps, len(sizes), until), sizes):
        if step < end:
            return size
    return sizes[-1]
