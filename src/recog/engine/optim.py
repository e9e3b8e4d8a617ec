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
