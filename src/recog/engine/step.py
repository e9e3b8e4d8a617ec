"""One optimisation step, shared by the loop and the time-budget calibration (both measure the same work)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from recog.data.augment import resize
from recog.device import autocast
from recog.engine.optim import l1_penalty
from recog.tasks import Batch, Task


class NonFiniteLoss(Exception):
    def __init__(self, value: float) -> None:
        super().__init__(value)
        self.value = value


@dataclass
class Stepper:
    """Forward under autocast, the task's loss (+ L1), NaN check, backward, clip, step."""

    net: nn.Module  # what runs: the model or its torch.compile / DDP wrapper
    model: nn.Module  # the parameters (L1, clipping)
    optimizer: torch.optim.Optimizer
    task: Task
    device: torch.device
    precision: str = "fp32"
    l1: float = 0.0
    grad_clip: float | None = None
    micro_batch: int | None = None
    all_finite: Callable[[torch.Tensor], bool] | None = None  # under DDP: finite on every rank (they stop together)
    size: int | None = None  # progressive resizing: the images' side this step trains at (None: as they come)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def set_size(self, size: int | None) -> None:
        self.size = size

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the batch: (loss, outputs). With ``micro_batch`` the batch's forward
        and backward run in chunks whose gradients add up (each chunk's mean loss weighted by its
        share of the batch), so a large batch fits in memory or in cache. Batch-norm then
        normalises per chunk. With a ``size`` the images are resized to it first."""
        if self.size is not None:
            batch = (resize(batch[0], self.size), *batch[1:])
        n = len(batch[0])
        chunk = self.micro_batch or n
        outs, total = [], 0.0
        for start in range(0, n, chunk):
            part = batch if chunk >= n else tuple(t[start:start + chunk] for t in batch)
            with autocast(self.device, self.precision):
                out = self.task.forward(self.net, part)
                loss = self.task.loss(out, self.task.targets(part))
            if len(part[0]) < n:
                loss = loss * (len(part[0]) / n)
            if self.l1 > 0 and start == 0:
                loss = loss + self.l1 * l1_penalty(self.model)
            if not (torch.isfinite(loss) if self.all_finite is None else self.all_finite(loss)):
                raise NonFiniteLoss(loss.item() * n / len(part[0]))
            if start == 0:  # after the first forward, as the old gradients are not needed in it
                self.optimizer.zero_grad(set_to_none=True)
            # DDP: all-reduce the gradients once, after the last chunk
            last = start + chunk >= n
            with contextlib.nullcontext() if last or not hasattr(self.net, "no_sync") else self.net.no_sync():
                loss.backward()
            total = total + loss.detach()
            outs.append(out.detach())
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        return total, outs[0] if len(outs) == 1 else torch.cat(outs)
