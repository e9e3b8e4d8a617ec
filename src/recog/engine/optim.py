"""Optimizers with the usual split: no weight decay (nor L1) on biases and normalisation parameters."""

from __future__ import annotations

import torch
from torch import nn


def decayed_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights of conv and linear layers, everything else): matrices and filters are regularised."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return decay, no_decay


def make_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = True,
    bias_lr_scale: float = 1.0,
) -> torch.optim.Optimizer:
    """Two groups: conv/linear weights with weight decay; biases and norms without, their learning
    rate scaled by ``bias_lr_scale`` (the loop sets ``lr * group["lr_scale"]``)."""
    decay, no_decay = decayed_parameters(model)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_scale": bias_lr_scale}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def l1_penalty(model: nn.Module) -> torch.Tensor:
    decay, _ = decayed_parameters(model)
    return sum(p.abs().sum() for p in decay)  # type: ignore[return-value]


class Lookahead:
    """airbench's lookahead: every ``every`` steps the weights are pulled back to a trailing average
    of themselves, which then continues from there. The average's decay grows as (step/total)^3,
    so early training runs free and the last steps average over a longer window; at the end the
    weights become the average (``finish``). Batch-norm statistics are averaged too."""

    def __init__(self, model: nn.Module, every: int = 5) -> None:
        self.every = every
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @staticmethod
    def decay_at(step: int, total_steps: int) -> float:
        return 0.95**5 * (step / total_steps) ** 3

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        for k, v in model.state_dict().items():
            if k in self.average:
                self.average[k].lerp_(v, 1.0 - decay)
                v.copy_(self.average[k])

    def step(self, model: nn.Module, step: int, total_steps: int) -> None:
        if step % self.every == 0:
            self.update(model, self.decay_at(step, total_steps))

    def finish(self, model: nn.Module) -> None:
        self.update(model, 1.0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.average.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.average[k].copy_(v)
