"""``recog tune``: an Optuna study over recog's training options and the model's architecture.

A feature on top of training: every trial is an ordinary ``recog.train`` run (its own folder under
the study's) with the sampled options as explicit overrides, ``final_eval: val`` (the test split is
never read during a study: a path source's test files are not even opened) and an epoch hook that
reports the validation score to Optuna and stops the run when the pruner says so.

The study has a name and a fixed folder, ``PROJECT/tune/NAME/``, holding ``study.db`` (SQLite, the
default storage; ``storage`` may be any Optuna RDB URL, e.g. PostgreSQL), ``trials/`` (the runs),
``trials.csv`` and ``best.yaml`` (the best trial's options: ``recog train --config best.yaml``).
The same call again resumes the study: ``trials`` more trials, numbering continued.

Search spaces are YAML, one entry per training option (``model_args.NAME`` for the model builder's
arguments, or ``model_args`` choosing several at once)::

    lr: {float: [0.005, 0.2], log: true}
    model_args.depth: {int: [1, 3]}
    model_args.widths: {choice: [[32, 64, 64], [64, 256, 256]]}

Defaults ship per model family in ``recog/tune_spaces/`` (airnet, seednet, default).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from recog.config import LR_AUTO, field_names, make_config
from recog.errors import ConfigError, MissingExtra, OutputError, RecogError, did_you_mean
from recog.fileio import atomic_write_text

PRUNERS = ("hyperband", "median", "none")
# what a study can optimise: the validation score, the model's inference time per image (ms, timed as
# the time-budget planner times evaluation) or its parameter count; several at once give a Pareto front
OBJECTIVES = {"accuracy": "maximize", "latency": "minimize", "params": "minimize"}
KINDS = ("float", "int", "choice")
HEARTBEAT_S = 30  # a trial's worker reports alive this often (its trial is failed after 3 silent intervals)
STUDY_KEYS = ("data", "model", "objectives")  # what a study is about: resuming it with other values is an error


@dataclass
class TuneResult:
    """A study after ``tune``: its folder, the best trial (None before any completed) and every trial."""

    study: str
    folder: Path
    storage: str
    best_value: float | None
    best_params: dict[str, Any]
    best_config: Path | None
    trials: list[dict[str, Any]]


def require_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise MissingExtra("recog tune needs Optuna", "tune") from None
    return optuna


def load_space(model: str | None, space: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """The search space: ``space`` (a YAML file) or the one shipped for the model's family."""
    if space is not None:
        path = Path(space).expanduser()
        if not path.is_file():
            raise ConfigError(f"--space {path}: no such file")
        try:
            entries = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"--space {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        where = str(path)
    else:
        family = next((f for f in ("airnet", "seednet", "pretrained") if (model or "airnet").startswith(f)), "default")
        where = f"recog/tune_spaces/{family}.yaml"
        entries = yaml.safe_load(resources.files("recog").joinpath(f"tune_spaces/{family}.yaml").read_text("utf-8"))
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{where}: a search space is a mapping of training options to ranges (see recog tune --help)")
    names = set(field_names())
    for key, spec in entries.items():
        option = str(key).split(".", 1)[0]
        if option not in names:
            raise ConfigError(f"{where}: {key!r} is not a training option{did_you_mean(option, names)}")
        kinds = [k for k in KINDS if isinstance(spec, dict) and k in spec]
        if len(kinds) != 1 or set(spec) - {kinds[0], "log"}:
            raise ConfigError(f"{where}: {key}: give one of {{float: [low, high]}}, {{int: [low, high]}} or "
                              f"{{choice: [a, b, ...]}} (log: true for a log scale); got {spec!r}")
        values = spec[kinds[0]]
        if kinds[0] == "choice":
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: {key}: choice needs a non-empty list, got {values!r}")
            if key == "model_args" and not all(isinstance(v, dict) for v in values):
                raise ConfigError(f"{where}: model_args: each choice is a mapping of builder arguments")
        elif not (isinstance(values, list) and len(values) == 2 and all(isinstance(v, (int, float)) for v in values)
                  and values[0] < values[1]):
            raise ConfigError(f"{where}: {key}: {kinds[0]} needs [low, high] with low < high, got {values!r}")
        elif spec.get("log") and values[0] <= 0:
            raise ConfigError(f"{where}: {key}: a log scale needs low > 0, got {values[0]}")
    return entries


def sample(trial: Any, space: dict[str, dict[str, Any]], base_model_args: dict[str, Any]) -> dict[str, Any]:
    """The trial's training options (model builder arguments merged into ``model_args``)."""
    options: dict[str, Any] = {}
    model_args: dict[str, Any] = {}
    for key, spec in space.items():
        if "float" in spec:
            value: Any = trial.suggest_float(key, *spec["float"], log=bool(spec.get("log")))
        elif "int" in spec:
            value = trial.suggest_int(key, *spec["int"], log=bool(spec.get("log")))
        else:  # Optuna's choices are scalars: lists and mappings travel as their JSON text
            labels = [json.dumps(c, sort_keys=True) for c in spec["choice"]]
            value = json.loads(trial.suggest_categorical(key, labels))
        if key == "model_args":
            model_args.update(value)
        elif key.startswith("model_args."):
            model_args[key.split(".", 1)[1]] = value
        else:
            options[key] = value
    if model_args:
        options["model_args"] = {**base_model_args, **model_args}
    return options


def _pruner(optuna: Any, name: Any) -> Any:
    if isinstance(name, optuna.pruners.BasePruner):  # the Python API may pass its own
        return name
    if name not in PRUNERS:
        raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}; got {name!r}{did_you_mean(name, PRUNERS)}")
    if name == "hyperband":  # Optuna's advice with TPE
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def _pruner_name(pruner: Any) -> str:
    return pruner if isinstance(pruner, str) else type(pruner).__name__


FEW_TRIALS = 20  # completed trials under which the importances plot says it means little


class _StudyStopped(Exception):
    """A trial's files could not be written: the study stops (Optuna records the trial failed)."""


def tune_root(project: str | os.PathLike) -> Path:
    """PROJECT/tune, the folder of the studies; a --project that already names a ``tune`` folder is
    it (``--project runs/tune`` wrote runs/tune/tune/… before)."""
    root = Path(project).expanduser()
    return root if root.name == "tune" else root / "tune"


PRETRAINED_SPACE = "pretrained"  # tune_spaces/pretrained.yaml: the strategy and its learning rates


def _transfers(data: str, model: str | None, options: dict[str, Any]) -> bool:
    """Whether the trials will start from pretrained weights (as the planner decides for ``recog train``)."""
    from recog.data import probe_dataset
    from recog.engine.plan import plan_transfer

    given = {k: v for k, v in dict(data=data, model=model, **options).items() if v is not None}
    return plan_transfer(given, probe_dataset(data, options.get("data_root"))) is not None


def check_study_name(name: str) -> None:
    """A study name is one folder name under PROJECT/tune: no path separators, not '.' or '..'."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError(f"--study {name!r}: a study name is a plain folder name (letters, digits, - _ .), "
                          f"not a path")


def masked(url: str) -> str:
    """A storage URL with its password hidden (postgresql://user:***@host/db)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def study_name(data: str, model: str | None) -> str:
    """A name from the data and the model (``digits-seednet``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{Path(str(data)).name or data}-{model or 'auto'}").strip("-")


def _score(row: dict[str, Any]) -> float:
    """The task's validation score of an epoch (the epoch hook's ``score``: val_acc, val_map…)."""
    return float(row["score"])


def tune(
    data: str = "digits",
    model: str | None = None,
    trials: int = 10,
    timeout: float | None = None,
    trial_budget: str | None = None,
    epochs: int | None = None,
    space: str | os.PathLike | None = None,
    study: str | None = None,
    storage: str | None = None,
    pruner: Any = "hyperband",
    project: str | os.PathLike = "runs",
    seed: int = 0,
    jobs: int = 1,
    verbose: bool = True,
    heartbeat: float = HEARTBEAT_S,
    objectives: Sequence[str] = ("accuracy",),
    _worker: int | None = None,
    **train_options: Any,
) -> TuneResult:
    """Run ``trials`` more trials of the study (created, or resumed when it exists); see the module doc.
    ``trial_budget`` sizes every trial by time (``"1m"``: the time-budget planner), ``epochs`` by
    epochs; ``train_options`` are fixed training options for every trial. ``pruner``: hyperband,
    median, none, or an Optuna pruner object. ``jobs``: trials run in that many worker processes
    at once, sharing the study's storage, each with its share of the CPU cores. ``objectives``:
    accuracy first, then latency and/or params: the study keeps the Pareto front (unpruned: Optuna's
    pruners are single-objective) and ``best.yaml`` is the front's most accurate point."""
    optuna = require_optuna()
    from recog import api

    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    objectives = _check_objectives(objectives)
    multi = len(objectives) > 1
    if multi and not isinstance(pruner, str) or multi and pruner not in ("hyperband", "none"):
        raise ConfigError("multi-objective studies run unpruned (Optuna's pruners are single-objective): "
                          "leave --pruner out")
    if multi:
        pruner = "none"
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout must be positive, got {timeout}")
    entries = load_space(PRETRAINED_SPACE if space is None and _transfers(data, model, train_options) else model, space)
    name = study or study_name(data, model)
    check_study_name(name)
    folder = tune_root(project) / name
    base = {k: v for k, v in dict(data=data, model=model, epochs=epochs, time_budget=trial_budget, seed=seed,
                                  **train_options).items() if v is not None}
    reserved = sorted(set(base) & {"final_eval", "project", "name", "verbose"})
    if reserved:
        raise ConfigError(f"recog tune sets {', '.join(reserved)} itself (trials evaluate on val, in the study folder)")
    if base.get("lr") == LR_AUTO and _worker is None:  # the range test once, on val only; every trial starts there
        base = {k: v for k, v in api.lr_auto(None, {**base, "final_eval": "val", "verbose": verbose}).items()
                if k not in ("final_eval", "verbose")}
        train_options = {**train_options, **{k: base[k] for k in ("lr", "muon_lr") if k in base}}
    checked = make_config(None, **base, final_eval="val", verbose=False)  # bad options fail here, not in trial 0
    budget_s = checked.budget_s
    folder.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}  # workers share the file
    rdb = _open_storage(optuna, url, engine, heartbeat)
    sampler_seed = seed + 1000 * (_worker or 0)  # workers must not propose the same first trials
    the_study = optuna.create_study(study_name=name, storage=rdb, directions=[OBJECTIVES[o] for o in objectives],
                                    load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=sampler_seed),
                                    pruner=_pruner(optuna, pruner))
    _check_same_study(the_study, name, {"data": str(data), "model": str(model), "objectives": ",".join(objectives)})
    if the_study.trials:  # resumed: a sampler seeded as before would propose the earlier trials' options again
        the_study.sampler = optuna.samplers.TPESampler(seed=sampler_seed + 7919 * len(the_study.trials))
    if jobs > 1:
        return _run_workers(dict(data=data, model=model, timeout=timeout, trial_budget=trial_budget, epochs=epochs,
                                 space=space, study=name, storage=url, pruner=pruner, project=project, seed=seed,
                                 verbose=verbose, heartbeat=heartbeat, objectives=objectives, **train_options),
                            trials, jobs, the_study, folder, url, base)

    def objective(trial: Any) -> float | tuple[float, ...]:
        options = sample(trial, entries, dict(checked.model_args))
        best, pruned_at = -math.inf, None
        reported: set[int] = set()
        started = time.perf_counter()

        def report(row: dict[str, Any]) -> bool:
            nonlocal best, pruned_at
            score = _score(row)
            best = max(best, score)
            if multi:
                return False
            # trials sized by time report at the tenth of their budget an epoch ends in, so the pruner
            # compares trials at equal time (a fast configuration runs more, shorter epochs); else by epoch
            step = (max(1, min(10, round(10 * (time.perf_counter() - started) / budget_s))) if budget_s
                    else int(row["epoch"]))
            if step in reported:
                return False
            reported.add(step)
            trial.report(score, step)
            if trial.should_prune():
                pruned_at = int(row["epoch"])
                return True  # the run stops after this epoch, its folder complete
            return False

        try:
            run = api.train(**{**base, **options}, final_eval="val", project=str(folder / "trials"),
                            name=f"trial-{trial.number:04d}", verbose=False, on_epoch_end=report)
        except OutputError as exc:  # a full disk fails every trial alike: stop, do not burn the study
            raise _StudyStopped(exc) from None
        trial.set_user_attr("run", str(run.path))
        trial.set_user_attr("options", options)  # what best.yaml is made of
        trial.set_user_attr("worker", _worker or 0)
        trial.set_user_attr("epochs", len(run.metrics))
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
        if verbose:
            what = f"pruned after epoch {pruned_at}" if pruned_at else f"best val {best:.4f}"  # (the run's epoch)
            shown = ", ".join(f"{k}={_short(v)}" for k, v in options.items())
            print(f"trial {trial.number}: {what} ({time.perf_counter() - started:.0f} s) {shown}", file=sys.stderr)
        if pruned_at is not None:
            raise optuna.TrialPruned(f"pruned after epoch {pruned_at}")
        if not multi:
            return best
        measured = tuple(measure(run, o) for o in objectives[1:])
        if verbose:
            print(f"trial {trial.number}: " + ", ".join(f"{o} {v:.4g}" for o, v in zip(objectives[1:], measured)),
                  file=sys.stderr)
        return (best, *measured)

    before = len(the_study.trials)
    if verbose and _worker is None:
        print(f"study {name} in {folder} ({before} earlier trials); {trials} trials"
              + (f", at most {timeout:.0f} s" if timeout else "") + f", pruner {_pruner_name(pruner)}", file=sys.stderr)
    try:
        the_study.optimize(objective, n_trials=trials, timeout=timeout, catch=(RecogError,), gc_after_trial=True)
    except _StudyStopped as stop:
        raise OutputError(f"the study stopped: a trial could not write its files ({stop.args[0]}); the trials after "
                          f"it would fail the same way. Free space or choose another --project, then run the same "
                          f"command again to resume the study") from None
    return _write_results(the_study, folder, url, base, verbose and _worker is None)


def _run_workers(kwargs: dict[str, Any], trials: int, jobs: int, the_study: Any, folder: Path, url: str,
                 base: dict[str, Any]) -> TuneResult:
    """``jobs`` worker processes (not threads: the memory-reuse switch, determinism and the RNGs are
    process-wide), each running its share of the trials with its share of the cores."""
    import multiprocessing

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    shares = [trials // jobs + (i < trials % jobs) for i in range(jobs)]
    if kwargs["verbose"]:
        print(f"study {the_study.study_name} in {folder} ({len(the_study.trials)} earlier trials); {trials} trials "
              f"in {jobs} processes of {max(1, cores // jobs)} threads", file=sys.stderr)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_work, args=(kwargs, share, i + 1, max(1, cores // jobs)), daemon=False)
               for i, share in enumerate(shares) if share]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    failed = [w.exitcode for w in workers if w.exitcode]
    if failed:
        print(f"warning: {len(failed)} of {len(workers)} tuning workers ended with an error (exit codes "
              f"{failed}); their finished trials are kept", file=sys.stderr)
    import optuna

    the_study = optuna.load_study(study_name=the_study.study_name, storage=url)  # every worker's trials
    return _write_results(the_study, folder, url, base, kwargs["verbose"])


def _work(kwargs: dict[str, Any], trials: int, worker: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    tune(**kwargs, trials=trials, jobs=1, _worker=worker)


def _open_storage(optuna: Any, url: str, engine: dict[str, Any], heartbeat: float = HEARTBEAT_S,
                  attempts: int = 5) -> Any:
    """Optuna's RDB storage with heartbeats: a trial whose worker died (killed, the machine lost)
    stops beating, is marked failed by the next worker after ``3 x heartbeat`` seconds and retried
    once with the same options. Workers starting at once on a new database race to create its
    tables: the loser tries again and finds them."""
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                stale = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # Optuna >= 4.9
                retry = ({"heartbeat_stale_trial_callback": stale(max_retry=1)} if stale is not None else
                         {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)})
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=max(1, int(heartbeat)),
                                                  grace_period=max(2, int(3 * heartbeat)), **retry)
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy / driver errors: name the URL
            if attempt == attempts - 1 or "nique" not in str(exc):  # only the creation race is worth a retry
                reason = str(exc).splitlines()[0][:200].replace(url, masked(url))
                raise ConfigError(f"--storage {masked(url)}: cannot open it ({masked(reason)})") from None
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def _check_objectives(objectives: Sequence[str] | str) -> tuple[str, ...]:
    names = tuple(o.strip() for o in (objectives.split(",") if isinstance(objectives, str) else objectives))
    unknown = [o for o in names if o not in OBJECTIVES]
    if unknown:
        raise ConfigError(f"--objectives: unknown {unknown[0]!r}{did_you_mean(unknown[0], OBJECTIVES)} "
                          f"(choose from {', '.join(OBJECTIVES)}, accuracy first)")
    if not names or names[0] != "accuracy" or len(set(names)) != len(names):
        raise ConfigError(f"--objectives: accuracy first, then latency and/or params, each once; got {','.join(names)}")
    return names


def measure(run: Any, objective: str) -> float:
    """A trained run's ``params`` (count) or ``latency`` (ms per image at batch 64 in its precision,
    timed by the code that sizes the time budget's evaluation)."""
    import torch

    if objective == "params":
        return float(sum(p.numel() for p in run.model.parameters()))
    from recog.device import autocast
    from recog.engine.budget import time_eval

    cfg = run.config
    device = next(run.model.parameters()).device
    x = torch.randn(64, cfg.channels, cfg.image_size, cfg.image_size, device=device)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return 1000 * time_eval(run.model, x, lambda: autocast(device, cfg.precision))


def _check_same_study(the_study: Any, name: str, about: dict[str, str]) -> None:
    """A new study records what it is about; resuming it with other data or model is an error."""
    saved = {k: the_study.user_attrs.get(k) for k in STUDY_KEYS}
    for k, v in about.items():
        if saved[k] is None:  # a new study (or one from before the key existed)
            the_study.set_user_attr(k, v)
    changed = [f"{k} {saved[k]!r} (not {about[k]!r})" for k in STUDY_KEYS if saved[k] not in (None, about[k])]
    if changed:
        raise ConfigError(f"study {name} was made for {', '.join(changed)}: resume it with the same options, "
                          f"or start another with --study NAME")


def _decoded(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters as values (its choices are stored as their JSON text)."""
    return {k: json.loads(v) if isinstance(v, str) else v for k, v in params.items()}


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else json.dumps(value, separators=(",", ":"))


def _write_results(the_study: Any, folder: Path, url: str, base: dict[str, Any], verbose: bool) -> TuneResult:
    """trials.csv (every trial) and best.yaml (the best completed trial's options)."""
    import optuna

    multi = len(the_study.directions) > 1
    front = {t.number for t in the_study.best_trials} if multi else set()
    rows = []
    for t in the_study.trials:
        values = t.values or []
        rows.append({"number": t.number, "state": t.state.name.lower(),
                     "value": round(values[0], 6) if values else "",
                     "values": json.dumps([round(v, 6) for v in values]) if multi else "",
                     "pareto": ("yes" if t.number in front else "no") if multi else "",
                     "epochs": t.user_attrs.get("epochs", len(t.intermediate_values)), "seconds": t.user_attrs.get("seconds", ""),
                     "worker": t.user_attrs.get("worker", ""), "run": t.user_attrs.get("run", ""),
                     "params": json.dumps(_decoded(t.params), sort_keys=True)})
    columns = ["number", "state", "value", *(["values", "pareto"] if multi else []), "epochs", "seconds", "worker",
               "run", "params"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(folder / "trials.csv", buf.getvalue())
    complete = [t for t in the_study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    _plots(the_study, folder, len(complete))
    if not complete:
        if verbose:
            print(f"no trial completed yet; trials in {folder / 'trials.csv'}", file=sys.stderr)
        return TuneResult(the_study.study_name, folder, url, None, {}, None, rows)
    # single objective: the best trial; several: the Pareto front's most accurate point
    best = max(the_study.best_trials, key=lambda t: t.values[0]) if multi else the_study.best_trial
    options = best.user_attrs["options"]
    config = {k: v for k, v in {**base, **options}.items() if k != "time_budget"}
    budget = ""
    if "time_budget" in base:  # trials sized by time: the final training gets the epochs the best trial ran,
        config.setdefault("epochs", best.user_attrs.get("epochs"))  # not a budget that shrinks on a busy machine
        budget = (f"# the trials ran with --trial-budget {base['time_budget']} each; the best one trained "
                  f"{best.user_attrs.get('epochs', '?')} epochs in it, which is what this file trains (a budget is "
                  f"not carried over: a busy machine would train less; add --time-budget to use one)\n")
    header = (f"# recog tune: study {the_study.study_name}, trial {best.number} of {len(the_study.trials)}: "
              f"best validation score {best.values[0]:.4f}"
              + (" (the Pareto front's most accurate point; the front: pareto = yes in trials.csv)" if multi else "")
              + f"\n# (run: {best.user_attrs.get('run', '?')})\n" + budget +
              f"# train with it: recog train --config {folder / 'best.yaml'}\n")
    atomic_write_text(folder / "best.yaml", header + yaml.safe_dump(config, sort_keys=False))
    if verbose:
        if multi:
            names = the_study.user_attrs.get("objectives", "").split(",")
            print("Pareto front (" + ", ".join(names) + "):", file=sys.stderr)
            for t in sorted(the_study.best_trials, key=lambda t: -t.values[0]):
                print(f"  trial {t.number}: " + ", ".join(f"{n} {v:.4g}" for n, v in zip(names, t.values)),
                      file=sys.stderr)
        print(f"best: trial {best.number}, val {best.values[0]:.4f}: "
              + ", ".join(f"{k}={_short(v)}" for k, v in options.items()), file=sys.stderr)
        print(f"{len(complete)} of {len(the_study.trials)} trials completed; best options in {folder / 'best.yaml'}; "
              f"train with: recog train --config {folder / 'best.yaml'}")
    return TuneResult(the_study.study_name, folder, url, best.values[0], options, folder / "best.yaml", rows)


def _plots(the_study: Any, folder: Path, complete: int) -> None:
    """history.png (every trial's score and the best so far) and, from 2 completed trials with
    parameters on, importances.png (fANOVA: how much of the score's variance each option explains)."""
    if not complete:
        return
    import optuna.visualization.matplotlib as ovm

    from recog.fileio import atomic_path
    from recog.report import _pyplot

    plt = _pyplot()
    multi = len(the_study.directions) > 1
    first = {"target": lambda t: t.values[0], "target_name": "accuracy"} if multi else {}
    drawings: list[tuple[str, Any]] = [("history.png", lambda st: ovm.plot_optimization_history(st, **first))]
    if complete >= 2 and any(t.params for t in the_study.trials):
        drawings.append(("importances.png", lambda st: ovm.plot_param_importances(st, **first)))
    if multi:
        names = the_study.user_attrs.get("objectives", "").split(",")
        drawings.append(("pareto.png", lambda st: ovm.plot_pareto_front(st, target_names=names)))
    for name, draw in drawings:
        with warnings.catch_warnings():  # Optuna's matplotlib plots are "experimental"
            warnings.simplefilter("ignore")
            try:
                ax = draw(the_study)
            except (ValueError, RuntimeError):  # e.g. importances of parameters that never varied
                continue
        figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        if name == "importances.png" and complete < FEW_TRIALS:  # fANOVA on a handful of points is noise
            ax.set_title(f"{ax.get_title()}\nfrom {complete} completed trials: means little under {FEW_TRIALS}",
                         color="firebrick")
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        with atomic_path(folder / name) as tmp:
            figure.savefig(tmp, format="png", dpi=100)
        plt.close(figure)


def show(study: str, project: str | os.PathLike = "runs", storage: str | None = None, top: int = 10) -> str:
    """The study's leaderboard: its best ``top`` completed trials and the count of every state."""
    optuna = require_optuna()
    folder = tune_root(project) / study
    url = storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    if storage is None and not (folder / "study.db").is_file():
        known = sorted(p.name for p in tune_root(project).glob("*") if (p / "study.db").is_file())
        raise ConfigError(f"no study {study!r} in {folder.parent}" + (f" (studies: {', '.join(known)})" if known
                                                                      else ""))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        the_study = optuna.load_study(study_name=study, storage=_open_storage(optuna, url, {}))
    except KeyError:
        raise ConfigError(f"no study {study!r} in {url}") from None
    trials = the_study.trials
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    done = sorted((t for t in trials if t.values and t.state.name == "COMPLETE"), key=lambda t: -t.values[0])
    lines = [f"study {study}: {len(trials)} trials (" + ", ".join(f"{n} {k}" for k, n in sorted(states.items())) + ")",
             f"{'rank':>4} {'trial':>5} {'val':>7} {'epochs':>6} {'seconds':>7}  options"]
    for rank, t in enumerate(done[:top], 1):
        options = ", ".join(f"{k}={_short(v)}" for k, v in _decoded(t.params).items())
        lines.append(f"{rank:>4} {t.number:>5} {t.values[0]:>7.4f} {t.user_attrs.get('epochs', ''):>6} "
                     f"{t.user_attrs.get('seconds', ''):>7}  {options}")
    return "\n".join(lines)
