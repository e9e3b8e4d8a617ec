"""The Python API: short compositions of the engine, evaluation and inference; the CLI is a thin
layer over it.

    train = resolve the config -> engine.build -> engine.fit -> evaluate the best weights
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from recog.config import TrainConfig, make_config
from recog.data import load_dataset
from recog.config import parse_duration
from recog.device import resolve_device
from recog.engine import distributed as dist
from recog.engine.build import Training, build, data_options, run_data, session, shard_split
from recog.engine.checkpoint import LoopState, load_state
from recog.engine.distributed import is_main
from recog.engine.fit import EpochHook, Hooks, fit, gathered
from recog.engine.plan import plan
from recog.engine.memory import reuse_freed_memory
from recog.errors import ConfigError, DataError, WeightsError
from recog.evaluation import ablation, evaluate_split, write_predictions
from recog.fileio import check_folder, next_run_dir, remove_stale_temporaries
from recog.inference import Classifier, load, predict
from recog.models import create_model, list_models
from recog.report import plot_curves, write_metrics_csv, write_report, write_skipped
from recog.weights import load_into, read_weights

__all__ = ["Classifier", "ConfigError", "DataError", "Run", "WeightsError", "create_model", "evaluate", "list_models",
           "load", "predict", "train"]


@dataclass
class Run:
    """A finished (or early-stopped) training run."""

    path: Path
    config: TrainConfig  # the resolved record of the run (its config.yaml)
    metrics: list[dict[str, Any]]
    model: nn.Module
    classes: list[str]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def best_weights(self) -> Path:
        return self.path / "weights" / "best.safetensors"


def train(
    config: str | os.PathLike | None = None,
    *,
    resume: str | os.PathLike | None = None,
    on_epoch_end: EpochHook | None = None,
    **overrides: Any,
) -> Run:
    """Train a classifier. Keyword arguments are the config keys (``data``, ``model``, ``epochs``…);
    ``config`` is a YAML file of them. ``resume`` continues a run folder from its last epoch.
    ``on_epoch_end(row)`` is called with each epoch's metrics; returning True stops training.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the processes train one model with DDP: rank 0's config
    is the run's, each rank steps on its slice of every batch, rank 0 writes; the hook runs on rank 0."""
    if overrides.get("lr") == "auto" and resume is None:
        overrides = _lr_from_range_test(config, overrides)
    given = _given(config, resume, overrides)
    with dist.process_group(dist.device_for(resolve_device(given.device)),
                            parse_duration(given.dist_timeout, "dist_timeout")):
        dist.set_threads()
        planning = time.perf_counter()
        cfg, saved, run_dir = _resolve_everywhere(config, resume, overrides, given)
        planning = time.perf_counter() - planning
        with session(cfg):
            training = build(cfg, saved, run_dir, planning)
            writer = _tensorboard(training.run_dir) if cfg.tensorboard and is_main() else None
            try:
                state = fit(training, Hooks(writer, on_epoch_end))
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt) and is_main():
                    print(f"\ninterrupted; continue with: recog train --resume {training.run_dir}", file=sys.stderr)
                _late_skipped(training, share=False)  # no collective after a failure: the others may be gone
                raise
            finally:
                if writer is not None:
                    writer.close()
            _late_skipped(training)
            report = _final_report(training, state)
    return Run(training.run_dir, training.config, state.history, training.model, training.data.classes, report)


def _given(config: str | os.PathLike | None, resume: str | os.PathLike | None,
           overrides: dict[str, Any]) -> TrainConfig:
    """What this process was given, before any planning: its values are checked here (on every rank)
    and compared with rank 0's under torchrun."""
    if resume is not None and (Path(resume).expanduser() / "config.yaml").is_file():
        return make_config(Path(resume).expanduser() / "config.yaml",
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


def _lr_from_range_test(config: str | os.PathLike | None, overrides: dict[str, Any]) -> dict[str, Any]:
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
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"cannot resume {run_dir}: no config.yaml there (is it a run folder?)")
    changed = {k for k, v in overrides.items() if v is not None and k not in ("verbose", "device")}
    if config is not None or changed:
        raise ConfigError(f"cannot change {', '.join(sorted(changed)) or 'the config'} when resuming; "
                          f"the run continues with its saved config.yaml (only --device may change)")
    cfg = make_config(run_dir / "config.yaml", verbose=overrides.get("verbose"), device=overrides.get("device"))
    remove_stale_temporaries(run_dir)  # a kill mid-write leaves .name.XXXX.tmp files; the real ones are whole
    if not (run_dir / "weights" / "state.pt").is_file():  # killed before the first state was saved
        print(f"note: {run_dir} has no saved training state yet (stopped in its first epoch): starting it "
              f"again in the same folder", file=sys.stderr)
        return cfg, None, run_dir
    saved = load_state(run_dir / "weights" / "state.pt")
    loop = saved["loop"]
    # curves.png is the last file a run writes: without it, a finished loop still owes its final report
    if (loop["stopped_early"] or loop["epoch"] >= cfg.epochs) and (run_dir / "curves.png").is_file():
        raise ConfigError(f"{run_dir} already finished ({loop['epoch']} of {cfg.epochs} epochs)")
    return cfg, saved, run_dir


def _late_skipped(training: Training, share: bool = True) -> None:
    """Files that vanished or broke after the scan (streaming loader; ``share``: every rank's) join skipped.csv."""
    late = [s for loader in (training.train_loader, training.val_loader) for s in getattr(loader, "skipped", [])]
    late = [s for part in dist.gather(late) for s in part] if share and dist.active() else late
    if late and is_main():
        write_skipped(training.run_dir / "skipped.csv", sorted(set(training.data.skipped) | set(late)))


def _final_report(training: Training, state: LoopState) -> dict[str, Any]:
    """Evaluate the best weights on the test split (else val): report, predictions.csv, curves."""
    cfg, ds, run_dir = training.config, training.data, training.run_dir
    if dist.active() and cfg.verbose:  # each rank says what it did: its share, and the same weights
        sys.stderr.write(f"rank {dist.rank()}/{dist.world_size()}: trained on {training.ran_images} images; weights "
                         f"sha256 {dist.checksum(training.model)}\n")  # one write: the ranks' lines never interleave
        sys.stderr.flush()
    best = run_dir / "weights" / "best.safetensors"
    meta = training.meta
    if is_main() and best.is_file():  # rank 0's folder (on another machine the others have none)
        state_dict, meta = read_weights(best)
        load_into(training.model, state_dict, str(best))
    meta = dist.broadcast(meta)
    dist.broadcast_state(training.model)
    report: dict[str, Any] = {}
    if ds.eval_split is not None and cfg.final_eval != "off":
        split_name, split = ds.eval_split
        clf = Classifier(training.model, meta, training.device, best, cfg)
        # each image once: every rank evaluates its part, the parts are gathered in order
        report, rows = evaluate_split(clf, split, split_name, cfg.precision, cfg.tta, workers=cfg.workers,
                                      verbose=is_main(), part=shard_split(split), gather=gathered)
        report["title"] = f"{run_dir.name} ({cfg.model} on {cfg.data})"
        if is_main():
            write_report(run_dir, report)
            write_predictions(run_dir / "predictions.csv", rows)
    if is_main():  # metrics.csv again: a run resumed after a kill in its last epoch's writes has it complete
        write_metrics_csv(run_dir / "metrics.csv", state.history, training.task.columns)
        plot_curves(run_dir / "curves.png", state.history)
    if cfg.verbose and is_main():
        print(_summary(report, state, training), file=sys.stdout)
    return report


def _summary(report: dict[str, Any], state: LoopState, training: Training) -> str:
    lines = []
    if not report:
        lines.append("no test or val split: no final report (give the folder a test/ split or --val-fraction)")
    elif report.get("task") == "multilabel":
        lines.append(f"{report['split']} mAP {report['map_macro']:.4f} (micro {report['map_micro']:.4f}), exact match "
                     f"{report['exact_match']:.4f} on {report['num_images']} images (best epoch {state.best_epoch})")
    else:
        top5 = f", top-5 {report['top5_accuracy']:.4f}" if report["top5_accuracy"] is not None else ""
        lines.append(f"{report['split']} accuracy {report['accuracy']:.4f}{top5} on {report['num_images']} images "
                     f"(best epoch {state.best_epoch})")
    if training.budget is not None:
        lines.append(training.budget.spent())
    lines.append(f"run folder: {training.run_dir}")
    return "\n".join(lines)


def _with_classes(ds: Any, classes: list[str], data: str) -> Any:
    """The data with its labels renumbered as the model's ``classes`` (which must hold each of its
    classes): a text head given --classes may choose among more names than the data has."""
    if ds.classes == classes:
        return ds
    missing = [c for c in ds.classes if c not in classes]
    if missing or ds.multilabel:
        raise DataError(f"the classes of {data} ({', '.join(ds.classes[:6])}…) are not the model's "
                        f"({', '.join(classes[:6])}…)" + (f"; missing: {', '.join(missing[:6])}" if missing else ""))
    import dataclasses

    import torch

    order = torch.tensor([classes.index(c) for c in ds.classes])
    renumber = {name: dataclasses.replace(split, labels=order[split.labels])
                for name, split in (("train", ds.train), ("val", ds.val), ("test", ds.test)) if split is not None}
    return dataclasses.replace(ds, classes=list(classes), **renumber)


def _labelled_folder(data: str) -> str:
    """A folder to evaluate on that holds only ``test/`` (or ``val/``) and no ``train/``: that split."""
    path = Path(data).expanduser()
    if path.is_dir() and not (path / "train").is_dir():
        for split in ("test", "val"):
            if (path / split).is_dir():
                return str(path / split)
    return data


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'recog[tensorboard]'") from None
    return SummaryWriter(str(run_dir / "tensorboard"))


def evaluate(
    source: str | os.PathLike,
    data: str | None = None,
    data_root: str | None = None,
    tta: bool | None = None,
    out: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 256,
    verbose: bool = True,
    classes: list[str] | None = None,
    ablate: bool = False,
) -> dict[str, Any]:
    """Evaluate a run or weights file on ``data`` (default: the run's own data) and write a report
    and ``predictions.csv``. ``tta`` unset: as the run's final evaluation did. ``classes`` (a text-head
    model): choose among these names; the data's classes must be among them. ``ablate`` (a fusion
    model): also image only, text only and both, as ``report["ablation"]``."""
    if out is not None:
        check_folder(out, "--out")
    clf = load(source, device)
    if classes is not None:
        clf.set_classes(classes)
    cfg = clf.config
    if data is None:
        if cfg is None:
            raise ConfigError("which data? pass --data (a dataset name or image folder) for a bare weights file")
        data, data_root = cfg.data, data_root or cfg.data_root
    same = cfg is not None and data == cfg.data
    data = data if same else _labelled_folder(data)
    if same:
        ds = run_data(cfg.replace(data_root=data_root), clf.meta["image_size"], clf.meta["channels"], clf.device)
    else:
        options = {**data_options(cfg, clf.device), "without_test": False} if cfg is not None else {
            "device": str(clf.device)}  # other data: its test split is what the user asks to evaluate on
        ds = load_dataset(data, data_root, 0.0, 0, clf.meta["image_size"], clf.meta["channels"], **options)
    if ds.classes != clf.classes and clf.meta.get("head") == "text" and classes is None:
        if verbose:  # labels as language: the data's own class names are the label set
            print(f"note: {data} has other classes than the model was trained on; its text head chooses among "
                  f"them: {', '.join(ds.classes[:8])}{' …' if len(ds.classes) > 8 else ''}", file=sys.stderr)
        clf.set_classes(ds.classes)
    ds = _with_classes(ds, clf.classes, data)
    if clf.takes_text:  # image + text: the data's texts, embedded by the model's own encoder
        from recog.text import attach_text

        attach_text(ds, clf.meta.get("text_encoder"))
    elif ablate:
        raise ConfigError(f"--ablate is for image + text (fusion) models; {clf.source} takes images only")
    if (ds.channels, ds.image_size) != (clf.meta["channels"], clf.meta["image_size"]):
        raise DataError(f"{data} has {ds.channels}x{ds.image_size}px images; the model takes "
                        f"{clf.meta['channels']}x{clf.meta['image_size']}px")
    split_name, split = ds.eval_split or ("all", ds.train)  # a labelled folder without splits: all of it
    if ds.eval_split is None and same:
        raise DataError(f"{data} has no test or val split to evaluate on")
    precision = cfg.precision if cfg else "fp32"
    tta = (cfg.tta if cfg is not None else False) if tta is None else tta
    with reuse_freed_memory(clf.device.type == "cpu" and (cfg.reuse_memory if cfg else True)):  # 1.4x with TTA
        report, rows = evaluate_split(clf, split, split_name, precision, tta, batch_size, cfg.workers if cfg else None,
                                      verbose)
        if ablate:
            report["ablation"] = ablation(clf, split, split_name, report, precision, tta, batch_size,
                                          cfg.workers if cfg else None)  # both inputs: the report just made
    report["title"] = f"{clf.source} on {data}"
    out_dir = Path(out) if out else next_run_dir(cfg.project if cfg else "runs", "eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_report(out_dir, report)
    write_predictions(out_dir / "predictions.csv", rows)
    report["out"] = str(out_dir)
    if verbose:
        print(f"report written to {out_dir}", file=sys.stderr)
    return report

