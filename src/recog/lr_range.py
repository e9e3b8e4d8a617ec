"""``recog lr-find``: the learning-rate range test (Smith, "Cyclical learning rates", 2015; fastai's
``lr_find``). A feature on top of the engine: the run is built as ``recog train`` would build it
(planner, data, model, optimizer, augmentation), then trained for a few hundred steps with the
learning rate rising exponentially from ``start_lr`` to ``end_lr``; the loss is smoothed (an
exponential moving average, bias-corrected) and the scan stops when it diverges (4x its best) or
becomes non-finite. The suggestion is the rate at the smoothed loss's minimum divided by 10 (Smith's
rule: the largest rate that still learns, with a margin); the steepest descent is reported too.

With ``optimizer: muon`` the conv filters' rate moves with ``lr`` at the configured ratio
``muon_lr / lr`` (the loop scales every parameter group by its ``lr_scale``): the scan says so.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recog.data.loader import cycle
from recog.errors import ConfigError

if TYPE_CHECKING:
    from recog.config import TrainConfig

SMOOTHING = 0.98
DIVERGENCE = 4.0


@dataclass
class LRFind:
    """A range test: the rates tried, the raw and smoothed losses, the suggestion and the files."""

    lrs: list[float]
    losses: list[float]  # smoothed
    raw: list[float]
    suggestion: float
    minimum: float  # the rate at the smoothed loss's minimum
    steepest: float  # the rate where the smoothed loss fell fastest (per log-rate) before it
    stopped: str  # why the scan ended
    folder: Path
    note: str = ""
    muon_ratio: float | None = None  # muon_lr / lr of the scan (optimizer muon)


def lr_find(config: str | os.PathLike | TrainConfig | dict[str, Any] | None = None, start_lr: float = 1e-6,
            end_lr: float = 10.0, scan_steps: int = 200, **overrides: Any) -> LRFind:
    """Run the range test for the run ``recog train`` would make of ``config`` and ``overrides`` (the
    training options; ``verbose=False`` prints nothing); writes ``lr_find.png`` and ``lr_find.csv``
    into a new ``PROJECT/lr-find`` folder."""
    from recog.config import config_and_overrides, make_config
    from recog.engine.build import build, session
    from recog.engine.resolve import resolve
    from recog.engine.plan import plan
    from recog.engine.step import NonFiniteLoss
    from recog.fileio import next_run_dir

    if not (math.isfinite(start_lr) and math.isfinite(end_lr)):
        raise ConfigError(f"--start-lr and --end-lr must be finite numbers, got {start_lr} and {end_lr}")
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"--start-lr and --end-lr need 0 < start < end, got {start_lr} and {end_lr}")
    if scan_steps < 20:
        raise ConfigError(f"--scan-steps must be at least 20, got {scan_steps}")
    config, overrides = config_and_overrides(config, overrides)
    verbose = overrides.pop("verbose", None) is not False
    cfg = make_config(config, plan=plan, **{k: v for k, v in overrides.items() if v is not None}, verbose=False)
    folder = next_run_dir(cfg.project, "lr-find")
    lrs: list[float] = []
    raw: list[float] = []
    smooth: list[float] = []
    stopped = f"reached --end-lr {end_lr:g} after {scan_steps} steps"
    with session(cfg):
        cfg, prepared = resolve(cfg, None, folder)
        t = build(cfg, prepared)  # resolved: batch size, lr and muon_lr filled
        stepper = t.stepper()
        t.net.train()
        ratio = (end_lr / start_lr) ** (1 / (scan_steps - 1))
        average, best = 0.0, math.inf
        batches = cycle(t.train_loader)
        for i in range(scan_steps):
            lr = start_lr * ratio ** i
            stepper.set_lr(lr)
            try:
                loss, _ = stepper(next(batches))
            except NonFiniteLoss:
                stopped = f"the loss became non-finite at lr {lr:.3g}"
                break
            value = float(loss)
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            smoothed = average / (1 - SMOOTHING ** (i + 1))
            lrs.append(lr)
            raw.append(value)
            smooth.append(smoothed)
            best = min(best, smoothed)
            if i >= 10 and smoothed > DIVERGENCE * best:
                stopped = f"the loss diverged at lr {lr:.3g} ({DIVERGENCE:g}x its best)"
                break
    if len(smooth) < 10:
        raise ConfigError(f"the range test stopped after {len(smooth)} steps ({stopped}): start lower (--start-lr)")
    lowest = min(range(len(smooth)), key=smooth.__getitem__)
    slopes = [(smooth[i + 1] - smooth[i]) / math.log(lrs[i + 1] / lrs[i]) for i in range(max(1, lowest))]
    steep = min(range(len(slopes)), key=slopes.__getitem__)
    note, ratio = "", None
    if lowest == len(smooth) - 1:
        note = (f"the loss was still falling at the scan's last rate {lrs[-1]:.3g}: the minimum may lie beyond it "
                f"(raise --end-lr)")
    if cfg.optimizer == "muon":
        ratio = cfg.muon_lr / cfg.lr
        note = ((note + "; ") if note else "") + (
            f"optimizer muon: the conv filters' rate (muon_lr) moved with lr at the configured ratio "
            f"muon_lr/lr = {ratio:.3g}; to use the suggestion, set --lr to it and --muon-lr to {ratio:.3g}x it")
    result = LRFind(lrs, smooth, raw, lrs[lowest] / 10, lrs[lowest], lrs[steep], stopped, folder, note, ratio)
    _write(result, cfg)
    if verbose:
        print(f"lr range test of {cfg.model} on {cfg.data} ({len(lrs)} steps of {cfg.batch_size}, {cfg.optimizer}): "
              f"{stopped}", file=sys.stderr)
        if note:
            print(f"note: {note}", file=sys.stderr)
        print(f"suggested lr {result.suggestion:.3g} (the minimum's {result.minimum:.3g} / 10; steepest descent at "
              f"{result.steepest:.3g}); plot: {folder / 'lr_find.png'}")
    return result


def _write(result: LRFind, cfg: Any) -> None:
    from recog.fileio import atomic_path, atomic_write_text
    from recog.report import _pyplot

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["step", "lr", "loss", "smoothed_loss"])
    writer.writerows((i, f"{lr:.6g}", f"{r:.6g}", f"{s:.6g}")
                     for i, (lr, r, s) in enumerate(zip(result.lrs, result.raw, result.losses)))
    atomic_write_text(result.folder / "lr_find.csv", buf.getvalue())
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result.lrs, result.raw, color="0.8", linewidth=0.8, label="loss")
    ax.plot(result.lrs, result.losses, color="C0", label="smoothed")
    ax.axvline(result.suggestion, color="C2", linestyle="--", label=f"suggested {result.suggestion:.2g}")
    ax.axvline(result.minimum, color="C3", linestyle=":", label=f"minimum {result.minimum:.2g}")
    ax.set_xscale("log")
    top = max(result.losses[: max(1, len(result.losses) // 10)])  # where it started: the divergence is off-scale
    ax.set_ylim(min(result.losses) * 0.95, top * 1.15)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"lr range test: {cfg.model} on {Path(str(cfg.data)).name} ({cfg.optimizer})")
    ax.legend()
    fig.tight_layout()
    with atomic_path(result.folder / "lr_find.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
