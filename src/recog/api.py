"""The Python API: short compositions of the engine, evaluation and inference; the CLI is a thin
layer over it.

    train = resolve the config -> engine.build -> engine.fit -> evaluate the best weights
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from recog.config import CACHED, TrainConfig, config_and_overrides, lr_is_auto, make_config, parse_duration
from recog.device import resolve_device
from recog.engine import distributed as dist
from recog.engine.budget import budget_start
from recog.engine.build import Training, build, session, shard_split
from recog.engine.checkpoint import LoopState, load_loop, load_state
from recog.engine.distributed import is_main
from recog.engine.fit import EpochHook, Hooks, fit, gathered
from recog.engine.plan import plan
from recog.engine.partial import fit_partial
from recog.engine.probe import fit_head_first, fit_probe
from recog.engine.resolve import commit, resolve
from recog.errors import ConfigError, DataError, MissingExtra, WeightsError
from recog.evaluation import evaluate, evaluate_split, write_predictions
from recog.fileio import remove_stale_temporaries
from recog.inference import Classifier, inference_policy, load, predict
from recog.models import create_model, list_models
from recog.report import few_images, plot_curves, write_metrics_csv, write_report, write_skipped
from recog.tasks import report_markdown
from recog.runs import BEST, CONFIG, CURVES, METRICS, PREDICTIONS, SKIPPED, STATE, WEIGHTS, Run
from recog.weights import load_into, read_weights

FITS = {"probe": fit_probe, "partial": fit_partial, "full": fit_head_first}  # transfer strategies' loops

__all__ = ["Classifier", "ConfigError", "DataError", "Run", "WeightsError", "create_model", "evaluate", "list_models",
           "load", "predict", "train"]


def train(
    config: str | os.PathLike | TrainConfig | dict[str, Any] | None = None,
    *,
    resume: str | os.PathLike | None = None,
    on_epoch_end: EpochHook | None = None,
    **overrides: Any,
) -> Run:
    """Train a classifier. Keyword arguments are the config keys (``data``, ``model``, ``epochs``…); ``config``
    is a YAML file of them, a :class:`TrainConfig` or a dict (keywords win). ``resume`` continues a run folder
    from its last epoch. ``on_epoch_end(row)`` is called with each epoch's metrics; returning True stops it.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the processes train one model with DDP: rank 0's config
    is the run's, each rank steps on its slice of every batch, rank 0 writes; the hook runs on rank 0."""
    config, overrides = config_and_overrides(config, overrides)
    if resume is None and lr_is_auto(config, overrides):
        overrides = lr_auto(config, overrides)
    given = _given(config, resume, overrides)
    with dist.process_group(dist.device_for(resolve_device(given.device)),
                            parse_duration(given.dist_timeout, "dist_timeout")):
        dist.set_threads()
        planning = budget_start()  # a command's budget counts from its start, the API's from this call
        cfg, saved, run_dir = _resolve_everywhere(config, resume, overrides, given)
        planning = time.perf_counter() - planning
        with session(cfg):
            cfg, prepared = resolve(cfg, saved, run_dir, planning)  # every decision, then build once
            training = build(cfg, prepared, saved)
            commit(training, new=saved is None)  # a budget timed on the built run; config.yaml, metadata
            writer = _tensorboard(training.run_dir) if cfg.tensorboard and is_main() else None
            try:
                state = FITS.get(cfg.transfer, fit)(training, Hooks(writer, on_epoch_end))
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt) and is_main():
                    print(f"\ninterrupted; continue with: recog train --resume {training.run_dir}", file=sys.stderr)
                _late_skipped(training, share=False)  # no collective after a failure: the others may be gone
                raise
            finally:
                if writer is not None:
                    writer.close()
            _late_skipped(training)
            return _final_report(training, state)


def _given(config: str | os.PathLike | None, resume: str | os.PathLike | None,
           overrides: dict[str, Any]) -> TrainConfig:
    """What this process was given, before any planning: its values are checked here (on every rank)
    and compared with rank 0's under torchrun."""
    if resume is not None and (Path(resume).expanduser() / CONFIG).is_file():
        return make_config(Path(resume).expanduser() / CONFIG,
                           **{k: overrides.get(k) for k in ("verbose", "device")})
    return make_config(config, **overrides)


def _resolve_everywhere(config: str | os.PathLike | None, resume: str | os.PathLike | None,
                        overrides: dict[str, Any], given: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None,
                                                                                 Path | None]:
    """:func:`_resolve` on one process; under torchrun rank 0 resolves (plans, or finds the run to
    resume, or after a restart the run this job was training) and every rank follows it."""
    if not dist.active():
        return _resolve(config, resume, overrides)

    def resolve() -> tuple[Any, ...]:
        restarted = dist.restarted_run(given.project) if resume is None else None
        if restarted is not None:
            print(f"torchrun restart {dist.restart_count()}: continuing {restarted} from its last saved epoch",
                  file=sys.stderr)
            return (*_resolve(None, restarted, {k: overrides.get(k) for k in ("verbose", "device")}), given)
        return (*_resolve(config, resume, overrides), given)

    cfg, saved, run_dir, rank0_given = dist.from_rank0(resolve)
    differ = [k for k, v in given.to_dict().items() if k not in ("verbose",) and v != getattr(rank0_given, k)]
    if differ:
        shown = ", ".join(f"{k} ({getattr(given, k)!r} here, {getattr(rank0_given, k)!r} on rank 0)"
                          for k in differ[:4])
        print(f"warning: rank {dist.rank()} was started with a config that differs from rank 0's in {shown}"
              f"{' …' if len(differ) > 4 else ''}: following rank 0's", file=sys.stderr)
    return cfg, saved, run_dir


def lr_auto(config: str | os.PathLike | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """``lr="auto"``: the lr range test (``recog lr-find``) on this run's set-up first; its suggestion
    becomes ``lr`` (and, with Muon, ``muon_lr`` at the scan's ratio unless given)."""
    from recog.lr_range import lr_find

    if dist.world_size() > 1:
        raise ConfigError("--lr auto under torchrun: run recog lr-find on one process first, then train "
                          "with --lr (and --muon-lr) set to what it suggests")
    result = lr_find(config, **{k: v for k, v in overrides.items() if k != "lr"})
    chosen = {"lr": float(f"{result.suggestion:.3g}")}
    if result.muon_ratio is not None and overrides.get("muon_lr") is None:
        chosen["muon_lr"] = float(f"{result.suggestion * result.muon_ratio:.3g}")
    if overrides.get("verbose") is not False and is_main():
        print("--lr auto: training with " + ", ".join(f"{k} {v:g}" for k, v in chosen.items())
              + f" (range test in {result.folder})", file=sys.stderr)
    return {**overrides, **chosen}


def _resolve(config: str | os.PathLike | None, resume: str | os.PathLike | None,
             overrides: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any] | None, Path | None]:
    """(config, saved training state, run folder): a new run's, or the saved ones of a run to resume."""
    if resume is None:
        return make_config(config, plan=plan, **overrides), None, None
    run_dir = Path(resume).expanduser()
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(f"cannot resume {run_dir}: no config.yaml there (is it a run folder?)")
    changed = {k for k, v in overrides.items() if v is not None and k not in ("verbose", "device")}
    if config is not None or changed:
        raise ConfigError(f"cannot change {', '.join(sorted(changed)) or 'the config'} when resuming; "
                          f"the run continues with its saved config.yaml (only --device may change)")
    cfg = make_config(run_dir / CONFIG, verbose=overrides.get("verbose"), device=overrides.get("device"))
    remove_stale_temporaries(run_dir)  # a kill mid-write leaves .name.XXXX.tmp files; the real ones are whole
    if not (run_dir / WEIGHTS / STATE).is_file():  # killed before the first state was saved
        print(f"note: {run_dir} has no saved training state yet (stopped in its first epoch): starting it "
              f"again in the same folder", file=sys.stderr)
        return cfg, None, run_dir
    saved = load_state(run_dir / WEIGHTS / STATE)
    loop = saved["loop"]
    # curves.png is the last file a run writes: without it, a finished loop still owes its final report
    finished = load_loop(saved).finished if loop.get("steps_per_epoch") else loop["stopped_early"] or \
        loop["epoch"] >= cfg.epochs  # a state.pt from before the loop recorded its steps per epoch
    if finished and (run_dir / CURVES).is_file():
        raise ConfigError(f"{run_dir} already finished ({loop['epoch']} epochs)")
    _check_plan_unchanged(cfg, loop, run_dir)
    return cfg, saved, run_dir


def _check_plan_unchanged(cfg: TrainConfig, loop: dict[str, Any], run_dir: Path) -> None:
    """A resumed run continues the steps it saved (its learning-rate schedule ends there): epochs or steps
    edited in its config.yaml since are refused, not silently ignored. (A time budget's plan is re-made
    in the loop, and the cached-feature transfers count their own steps: neither is compared.)"""
    total, spe = loop.get("total_steps"), loop.get("steps_per_epoch")
    if cfg.time_budget is not None or cfg.transfer in CACHED or not total or not spe:
        return
    epochs = math.ceil(total / spe)
    if (cfg.steps is not None and cfg.steps != total) or (cfg.epochs is not None and cfg.epochs != epochs):
        raise ConfigError(
            f"{run_dir / CONFIG} says epochs {cfg.epochs}, steps {cfg.steps}, but the run was planned and saved "
            f"for {epochs} epochs ({total} steps) and its learning rate is scheduled to end there: a resumed run "
            f"continues that plan. Put the values back, or train longer as a new run that starts from these "
            f"weights: recog train --data {cfg.data} --weights {run_dir / WEIGHTS / 'last.safetensors'} --epochs N")


def _late_skipped(training: Training, share: bool = True) -> None:
    """Files that vanished or broke after the scan (streaming loader; ``share``: every rank's) join skipped.csv."""
    late = [s for loader in (training.train_loader, training.val_loader) for s in getattr(loader, "skipped", [])]
    late = [s for part in dist.gather(late) for s in part] if share and dist.active() else late
    if late and is_main():
        write_skipped(training.run_dir / SKIPPED, sorted(set(training.data.skipped) | set(late)))


def _final_report(training: Training, state: LoopState) -> Run:
    """Evaluate the best weights on the test split (else val): report, predictions.csv, curves; the Run."""
    cfg, ds, run_dir = training.config, training.data, training.run_dir
    if dist.active() and cfg.verbose:  # each rank says what it did: its share, and the same weights
        sys.stderr.write(f"rank {dist.rank()}/{dist.world_size()}: trained on {training.ran_images} images; weights "
                         f"sha256 {dist.checksum(training.model)}\n")  # one write: the ranks' lines never interleave
        sys.stderr.flush()
    best = run_dir / WEIGHTS / BEST
    meta = training.meta
    if is_main() and best.is_file():  # rank 0's folder (on another machine the others have none)
        state_dict, meta = read_weights(best)
        load_into(training.model, state_dict, str(best))
    meta = dist.broadcast(meta)
    dist.broadcast_state(training.model)
    report: dict[str, Any] = {}
    if ds.eval_split is not None and cfg.final_eval != "off":
        split_name, split = ds.eval_split
        clf = Classifier(training.model, meta, training.device, best, cfg,
                         inference_policy(meta, training.device, cfg.precision, cfg.tta))
        # each image once: every rank evaluates its part, the parts are gathered in order
        report, rows = evaluate_split(clf, split, split_name, workers=cfg.workers, part=shard_split(split),
                                      gather=gathered)
        report["title"] = f"{run_dir.name} ({cfg.model} on {cfg.data})"
        if is_main():
            write_report(run_dir, report, report_markdown(report))
            write_predictions(run_dir / PREDICTIONS, rows)
    if is_main():  # metrics.csv again: a run resumed after a kill in its last epoch's writes has it complete
        write_metrics_csv(run_dir / METRICS, state.history, training.task.columns)
        plot_curves(run_dir / CURVES, state.history)
    if cfg.verbose and is_main():
        print(_summary(report, state, training), file=sys.stdout)
    return Run(training.run_dir, training.config, state.history, training.model, ds.classes, report,
               state.total_steps)


def _summary(report: dict[str, Any], state: LoopState, training: Training) -> str:
    lines = []
    if not report:
        lines.append("no test or val split: no final report (give the folder a test/ split or --val-fraction)")
    else:
        lines.append(f"{training.task.summary(report)} (best epoch {state.best_epoch}){few_images(report['num_images'])}")
    if training.budget is not None:
        per_epoch = state.steps_per_epoch or training.steps_per_epoch  # the partial fine-tune's own epochs
        steps = min(state.total_steps, len(state.history) * per_epoch)
        lines.append(training.budget.spent(steps, sum(r["train_seconds"] for r in state.history), state.total_steps))
    lines.append(f"run folder: {training.run_dir}")
    return "\n".join(lines)


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingExtra("--tensorboard needs the tensorboard package", "tensorboard") from None
    return SummaryWriter(str(run_dir / "tensorboard"))
