"""The training state for ``--resume``: loop counters, optimizer, lookahead and RNG states.

Saved with ``torch.save`` (tensors, numbers, strings only) and loaded with ``weights_only=True``,
which refuses pickled code. Weights themselves are safetensors (:mod:`recog.weights`).
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recog.engine.optim import Lookahead
from recog.errors import WeightsError
from recog.fileio import atomic_path
from recog.weights import read_meta, unpickler_reason


@dataclass
class LoopState:
    """What a resumed run needs besides the weights and optimizer: saved in ``weights/state.pt``."""

    epoch: int = 0  # epochs completed
    best_score: float = -math.inf  # the task's validation score of the best epoch (val_acc, val_map…)
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    total_steps: int | None = None  # the plan (a time budget re-plans it after each epoch)
    steps_per_epoch: int | None = None  # what the steps are counted in

    @property
    def finished(self) -> bool:
        """The loop ran its planned steps, or stopped early."""
        return self.stopped_early or (self.total_steps is not None and self.steps_per_epoch is not None
                                      and self.epoch * self.steps_per_epoch >= self.total_steps)


def state_dict(state: LoopState, model: nn.Module, optimizer: torch.optim.Optimizer,
               lookahead: Lookahead | None = None) -> dict[str, Any]:
    return {
        "lookahead": lookahead.state_dict() if lookahead is not None else {},
        "loop": {k: getattr(state, k) for k in LoopState.__dataclass_fields__},
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state(),
        },
    }


def restore_state(saved: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                  lookahead: Lookahead | None = None) -> LoopState:
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if lookahead is not None and saved.get("lookahead"):
        lookahead.load_state_dict(saved["lookahead"])
    torch.set_rng_state(saved["rng"]["torch"])
    if saved["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    name, keys, pos, has_gauss, cached = saved["rng"]["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    return load_loop(saved)


def load_loop(saved: dict[str, Any]) -> LoopState:
    """The loop state of a saved training state."""
    loop = dict(saved["loop"])
    if "best_acc" in loop:  # state files written before tasks named their score
        loop["best_score"] = loop.pop("best_acc")
    return LoopState(**loop)


def reconcile(state: LoopState, weights_dir: Path, score: str, write: bool = True) -> str | None:
    """Make a restored loop state and the ``best`` weights on disk agree again after a kill.

    Each epoch writes ``last``, then ``state.pt`` (the commit), then ``best``. Killed between the
    last two, the state names the latest epoch as best while ``best`` still holds an older one: that
    epoch's weights are in ``last`` (written first), so they are copied to ``best``. Any other
    disagreement (a file lost or replaced by hand) falls back to the epoch ``best`` actually holds,
    or to none (the next epoch is then saved as best). Returns what was corrected, or None.
    ``write``: this process may copy the file (rank 0 under torchrun; the others only follow)."""
    best, last = weights_dir / "best.safetensors", weights_dir / "last.safetensors"
    meta = read_meta(best)
    held = meta.get("epoch") if meta else None
    if held == state.best_epoch:
        return None
    said = state.best_epoch
    last_meta = read_meta(last)
    if said and last_meta and last_meta.get("epoch") == said:
        if write:
            with atomic_path(best) as tmp:
                shutil.copyfile(last, tmp)
        return f"the run was killed before epoch {said}'s best weights were saved: restored them from {last}"
    if held is not None and 1 <= held <= len(state.history):
        state.best_epoch, state.best_score = held, state.history[held - 1].get(score, -math.inf)
    else:
        state.best_epoch, state.best_score = 0, -math.inf
    state.bad_epochs = state.epoch - state.best_epoch if state.best_epoch else 0
    return (f"the training state named epoch {said} as best, but {best} holds "
            f"{'epoch ' + str(held) if held else 'no weights'}; continuing with what is on disk")


def _numpy_state() -> list[Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no training state at {path}: nothing to resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"refusing to load training state {path}: {unpickler_reason(exc)}") from None
