"""Which transfer strategy a run affords: the planner's choice for ``transfer: auto`` (and the depth and
resolution of an explicit ``probe``/``partial`` under a time budget).

The strategies, from the least to the most capable: **probe** (the frozen backbone's pooled features
once per image and view; a linear head), **partial** (its activations at a stage boundary once; the
last stages and the head train on them for some epochs), **full** (every step runs and trains the whole
network). Their costs are timed here on this machine, on synthetic images at the weights' resolution:
the frozen forward per image, a training step of the tail for each unfreeze depth, a full training
step. :func:`choose` then takes, with a time budget:

* none of them (from scratch) when the one feature pass and the final evaluation would take more than
  :data:`FEATURE_SHARE` of the budget (many images, a short budget: e.g. 45,000 training images in 10
  minutes on a 2-core CPU, where a net trained from scratch reaches 92%);
* ``full`` when the budget fits at least :data:`FULL_EPOCHS` epochs of it after the final evaluation;
* else ``partial`` at the deepest unfreeze depth (up to :data:`MAX_UNFREEZE`) that fits at least
  :data:`PARTIAL_EPOCHS` epochs after the feature pass;
* else ``probe``.

Without a budget: ``partial`` at :data:`recog.config.UNFREEZE` stages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from recog.data import Probe
from recog.device import autocast, eval_mode

FEATURE_SHARE = 0.5  # of the budget, at most, for the feature pass and the final evaluation
FULL_EPOCHS = 20  # a full fine-tune needs at least these epochs to be chosen (on 2 CPU cores ~6 fit 2m: 82% < probe 95%)
PARTIAL_EPOCHS = 10  # the tail's epochs a partial fine-tune needs at least
MAX_UNFREEZE = 3  # the deepest partial the planner considers (Lite0: blocks 5, 6 and the 1x1 head conv)
TIMED = 16  # images per timed batch


@dataclass(frozen=True)
class Costs:
    """Seconds per image, measured on this machine."""

    forward_s: float  # the whole network's frozen forward (the feature pass, the final evaluation)
    tail_s: dict[int, float]  # a training step of the last k stages on cached activations, per k
    full_s: float  # a training step of the whole network


@dataclass(frozen=True)
class Choice:
    transfer: str | None  # None: from scratch
    unfreeze: int | None
    why: str
    size: int | None = None  # a resolution below the weights' own, where the budget needs it


def time_costs(model: torch.nn.Module, channels: int, size: int, device: torch.device, precision: str,
               channels_last: bool = True, depths: range = range(1, MAX_UNFREEZE + 1)) -> Costs:
    """Time ``model`` (a throw-away one: it is trained a little): a frozen forward, a training step of its
    tail at each depth in ``depths`` (on the activations its trunk gives), and a full training step."""
    from recog.models.split import split_model, stage_count

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    x = torch.randn(TIMED, channels, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.zeros(TIMED, dtype=torch.long, device=device)

    def best_of(fn: Any, runs: int = 2) -> float:
        fn()  # warm-up
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return min(times) / TIMED

    def step(net: torch.nn.Module, inputs: torch.Tensor) -> None:
        with autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(net(inputs).float(), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    with eval_mode(model):
        with torch.no_grad(), autocast(device, precision):
            forward_s = best_of(lambda: model(x))
    tail_s = {}
    try:
        deepest = stage_count(model)
    except Exception:  # noqa: BLE001 - a model that cannot be cut: no partial
        deepest = 0
    for k in depths:
        if k > deepest:
            break
        trunk, tail = split_model(model, k)
        with torch.no_grad(), eval_mode(trunk), autocast(device, precision):
            acts = trunk(x)
        tail_s[k] = best_of(lambda: step(tail, acts)) * 1.1  # + the optimizer's step
    full_s = best_of(lambda: step(model, x), runs=1) * 1.1
    return Costs(forward_s, tail_s, full_s)


def choose(probe: Probe, budget_s: float | None, costs: Costs | None, flip: bool = True,
           default_unfreeze: int = 2) -> Choice:
    """The strategy by the rule of the module docstring. ``probe``: the images' counts; ``flip``: the
    training images' features are computed as they are and mirrored (and the final evaluation's TTA
    sees both). ``default_unfreeze``: the depth without a budget (0: the model cannot be cut)."""
    if budget_s is None or costs is None:
        if not default_unfreeze:
            return Choice("probe", None, "no time budget; a model that cannot be cut into stages: a linear head")
        return Choice("partial", default_unfreeze, "no time budget: the last stages fine-tuned on cached activations")
    views = 2 if flip else 1
    final_s = (probe.test or probe.val) * views * costs.forward_s
    feature_s = (probe.train * views + probe.val) * costs.forward_s
    if feature_s + final_s > FEATURE_SHARE * budget_s:
        return Choice(None, None, f"the feature pass and final evaluation of {probe.train * views + probe.val + (probe.test or probe.val) * views:,} "
                                  f"images (~{feature_s + final_s:.0f} s at {1 / costs.forward_s:.0f} images/s) "
                                  f"would take over {FEATURE_SHARE:.0%} of the budget")
    val_s = probe.val * costs.forward_s
    full_epochs = (0.9 * budget_s - final_s) / max(1e-9, probe.train * costs.full_s + val_s)
    if full_epochs >= FULL_EPOCHS:
        return Choice("full", None, f"the budget fits ~{full_epochs:.0f} epochs of a full fine-tune "
                                    f"(>= {FULL_EPOCHS})")
    left = 0.9 * budget_s - final_s - feature_s
    for k in sorted(costs.tail_s, reverse=True):
        epochs = left / max(1e-9, probe.train * costs.tail_s[k] + probe.val * costs.tail_s[k] / 3)
        if epochs >= PARTIAL_EPOCHS:
            return Choice("partial", k, f"the budget fits ~{epochs:.0f} epochs of the last {k} stage"
                                        f"{'s' if k > 1 else ''} on cached activations after the feature pass "
                                        f"(a full fine-tune: ~{max(0.0, full_epochs):.1f} epochs)")
    return Choice("probe", None, f"after the feature pass the budget fits fewer than {PARTIAL_EPOCHS} epochs of "
                                 f"even the last stage: a linear head on the features")


def fitting_size(probe: Probe, budget_s: float, costs: Costs, size: int, flip: bool,
                 ladder: tuple[int, ...]) -> int:
    """For an explicit probe or partial under a budget: the largest size on the planner's ladder, up to
    the weights' ``size``, at which the feature pass and the final evaluation take at most
    :data:`FEATURE_SHARE` of the budget (the forward's cost taken to scale with the pixels); the
    smallest if none does. ``ladder``: the planner's sizes (:data:`recog.engine.plan.LADDER`)."""
    views = 2 if flip else 1
    images = probe.train * views + probe.val + (probe.test or probe.val) * views
    sizes = [s for s in ladder if s < size] + [size]
    for s in reversed(sizes):
        if images * costs.forward_s * (s / size) ** 2 <= FEATURE_SHARE * budget_s:
            return s
    return sizes[0]
