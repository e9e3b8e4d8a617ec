"""Optimizers with the usual split: no weight decay (nor L1) on biases and normalisation parameters;
and Muon, which orthogonalises the momentum of conv filters (airbench94_muon's optimizer)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from recog.device import cpu_has_bf16


def decayed_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights of conv and linear layers, everything else): matrices and filters are regularised."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return decay, no_decay


PLAIN_LR = "recog_plain_lr"  # a parameter attribute: no weight decay, but not the biases' learning-rate multiplier


def _bias_groups(no_decay: list[nn.Parameter], bias_lr_scale: float) -> list[dict]:
    """Biases and norms at ``bias_lr_scale``; scalars marked :data:`PLAIN_LR` (a text head's learned
    temperature: the fast recipe's 64x would throw it to where every logit is equal) at the base rate."""
    plain = [p for p in no_decay if getattr(p, PLAIN_LR, False)]
    groups = [{"params": [p for p in no_decay if not getattr(p, PLAIN_LR, False)], "weight_decay": 0.0,
               "lr_scale": bias_lr_scale}]
    return groups + [{"params": plain, "weight_decay": 0.0, "lr_scale": 1.0}] if plain else groups


def optimizer_options(cfg: Any) -> dict[str, Any]:
    """:func:`make_optimizer`'s keyword arguments from a run's config."""
    return dict(name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                nesterov=cfg.nesterov, bias_lr_scale=cfg.bias_lr_scale, muon_lr=cfg.muon_lr,
                muon_momentum=cfg.muon_momentum, backbone_lr_scale=cfg.backbone_lr_scale)


def make_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = True,
    bias_lr_scale: float = 1.0,
    muon_lr: float = 0.24,
    muon_momentum: float = 0.6,
    backbone_lr_scale: float = 1.0,
    head: str | None = None,
) -> torch.optim.Optimizer:
    """Two groups: conv/linear weights with weight decay; biases and norms without, their learning
    rate scaled by ``bias_lr_scale`` (the loop sets ``lr * group["lr_scale"]``). ``head`` (the
    classifier's dotted name) with ``backbone_lr_scale``: every other parameter's rate is scaled by it
    (discriminative learning rates when fine-tuning pretrained weights).

    ``muon``: conv filters get their own group, updated by :class:`Muon` at ``muon_lr`` (scaled by
    the same schedule as ``lr``); every other parameter as with ``sgd``."""
    decay, no_decay = decayed_parameters(model)
    if name == "muon":
        filters = {id(p) for p in decay if p.ndim == 4}
        invariant = scale_invariant_filters(model)
        groups = [
            {"params": [p for p in decay if id(p) in filters and id(p) in invariant], "muon": True,
             "renormalize": True, "weight_decay": 0.0, "momentum": muon_momentum, "lr_scale": muon_lr / lr},
            {"params": [p for p in decay if id(p) in filters and id(p) not in invariant], "muon": True,
             "renormalize": False, "weight_decay": weight_decay, "momentum": muon_momentum,
             "lr_scale": muon_lr / lr},
            {"params": [p for p in decay if id(p) not in filters], "weight_decay": weight_decay, "lr_scale": 1.0},
            *_bias_groups(no_decay, bias_lr_scale),
        ]
        groups = _discriminative(groups, model, head, backbone_lr_scale)
        return Muon([g for g in groups if g["params"]], lr=lr, momentum=momentum, nesterov=nesterov)
    groups = _discriminative([{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
                              *_bias_groups(no_decay, bias_lr_scale)], model, head, backbone_lr_scale)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def _discriminative(groups: list[dict[str, Any]], model: nn.Module, head: str | None,
                    scale: float) -> list[dict[str, Any]]:
    """Each group split into the head's parameters (as they were) and the backbone's (``lr_scale`` times
    ``scale``); the groups as they are without a head or with a scale of 1."""
    if head is None or scale == 1.0:
        return groups
    own = {id(p) for p in model.get_submodule(head).parameters()}
    split = []
    for g in groups:
        split.append({**g, "params": [p for p in g["params"] if id(p) in own]})
        split.append({**g, "params": [p for p in g["params"] if id(p) not in own], "lr_scale": g["lr_scale"] * scale})
    return [g for g in split if g["params"]]


def scale_invariant_filters(model: nn.Module) -> set[int]:
    """ids of conv filters whose output goes straight into a batch-norm (by registration order:
    the next conv, linear or norm layer after the conv is a batch-norm), so that their scale does
    not change what the net computes."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]
    return {id(a.weight) for a, b in itertools.pairwise(layers)
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and a.weight.requires_grad}


def _iteration_dtype(g: torch.Tensor) -> torch.dtype:
    """bf16 where the hardware multiplies it natively (CUDA, AMX, AVX-512-BF16); fp32 elsewhere, where
    bf16 matmuls are emulated: measured 35x slower than fp32 for a 256 x 2,304 filter bank on a
    2-core EPYC without AVX-512 (0.83 s vs 0.024 s per orthogonalisation)."""
    return torch.bfloat16 if g.is_cuda or cpu_has_bf16() else torch.float32


def orthogonalize(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """Approximately the nearest semi-orthogonal matrix to ``g`` (U V^T of its SVD), by the quintic
    Newton-Schulz iteration of Muon (Keller Jordan's coefficients), in bf16 where it is fast."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(_iteration_dtype(g))
    x = x / (x.norm() + eps)  # every singular value <= 1
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Nesterov SGD for every group, except groups with ``muon=True`` (conv filters): there the
    (Nesterov) momentum, flattened to out x (in*k*k), is orthogonalised before the step.

    ``renormalize=True`` groups (filters followed by batch-norm) are first rescaled to a norm of
    sqrt(out channels) each step, as in airbench94_muon, which keeps the effective step size
    constant; other muon groups use decoupled weight decay and scale the step by
    sqrt(max(1, out/in)).

    Not ``torch.optim.Muon``: that one (torch >= 2.9; recog supports 2.2 on) takes 2-D parameters
    only, so neither 4-D filters nor the SGD groups beside them, and has no renormalisation."""

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, nesterov: bool = True) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=0.0,
                                      muon=False, renormalize=False))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # closure: unused, torch's signature
        for group in self.param_groups:
            lr, momentum, nesterov, wd = group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd and not group["muon"]:
                    g = g.add(p, alpha=wd)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(g)
                update = g.add(buf, alpha=momentum) if nesterov else buf
                if not group["muon"]:
                    p.add_(update, alpha=-lr)
                    continue
                rows = len(p)
                update = orthogonalize(update.reshape(rows, -1)).view_as(p)
                if group["renormalize"]:
                    p.mul_(rows**0.5 / p.norm())
                    p.add_(update, alpha=-lr)
                else:
                    p.mul_(1 - lr * wd)
                    p.add_(update, alpha=-lr * max(1.0, rows / update[0].numel()) ** 0.5)


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
