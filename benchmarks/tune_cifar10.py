"""`recog tune` on CIFAR-10 against the defaults: a study on a 10,000-image training subset of the
shared PNG copy with a 2,000-image validation split (other training images; the subset has no test
split, so no trial can read it), trials sized by a time budget; the same study again with
`--pruner none` (how many more trials pruning allowed in the same time); then the best config and
the default config (the planner's, as `recog train --data cifar10-png --time-budget B` makes it)
each retrained on the full 50,000 training images with fresh seeds at the same budget and evaluated
on the full 10,000-image test set.

    python benchmarks/tune_cifar10.py [--search 20m] [--trial-budget 1m] [--retrain-budget 2m] [--seeds 3]

Last line JSON: default_acc and tuned_acc (mean and std over the seeds), trials, pruned, search_s,
and the unpruned study's trials.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _common import cifar10_folder, command, machine, machine_line


def subset(root: Path, dest: Path, train_per_class: int = 1000, val_per_class: int = 200) -> Path:
    """train/ and val/ of symlinks to distinct files of CIFAR-10's training split."""
    for cls in sorted(p.name for p in (root / "train").iterdir()):
        files = sorted((root / "train" / cls).glob("*.png"))
        for split, chosen in (("train", files[:train_per_class]),
                              ("val", files[train_per_class:train_per_class + val_per_class])):
            (dest / split / cls).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                (dest / split / cls / f.name).symlink_to(f)
    return dest


def study(data: Path, project: Path, name: str, search_s: float, trial_budget: str, pruner: str) -> dict:
    from recog.tuning import tune

    started = time.perf_counter()
    result = tune(data=str(data), model="airnet", trials=10_000, timeout=search_s, trial_budget=trial_budget,
                  pruner=pruner, study=name, project=str(project), verbose=True)
    states = [r["state"] for r in result.trials]
    return {"result": result, "trials": len(states), "complete": states.count("complete"),
            "pruned": states.count("pruned"), "failed": states.count("fail"),
            "search_s": round(time.perf_counter() - started), "best_val": result.best_value}


def retrain(options: dict, budget: str, seeds: int, project: Path, label: str) -> list[float]:
    import recog

    accs = []
    for seed in range(100, 100 + seeds):  # fresh seeds: not the study's
        run = recog.train(**{**options, "data": str(cifar10_folder("png")), "time_budget": budget, "seed": seed},
                          project=str(project), name=f"{label}-{seed}", verbose=False)
        accs.append(run.report["accuracy"])
        print(f"{label} seed {seed}: test accuracy {run.report['accuracy']:.4f} ({run.path})", flush=True)
    return accs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--search", default="20m", help="each study's time (default: 20m)")
    parser.add_argument("--trial-budget", default="1m")
    parser.add_argument("--retrain-budget", default="2m")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    from recog.config import parse_duration

    info = machine()
    print(machine_line(info), flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = subset(cifar10_folder("png"), tmp / "cifar10-10k")
        search_s = parse_duration(args.search)
        pruned = study(data, tmp / "studies", "hyperband", search_s, args.trial_budget, "hyperband")
        print(f"study with hyperband: {pruned['trials']} trials in {pruned['search_s']} s ({pruned['complete']} "
              f"complete, {pruned['pruned']} pruned, {pruned['failed']} failed), best val {pruned['best_val']:.4f}",
              flush=True)
        unpruned = study(data, tmp / "studies", "none", search_s, args.trial_budget, "none")
        print(f"study without pruning: {unpruned['trials']} trials in {unpruned['search_s']} s, best val "
              f"{unpruned['best_val']:.4f}", flush=True)
        best = yaml.safe_load(pruned["result"].best_config.read_text())
        tuned_options = {k: v for k, v in best.items() if k not in ("data", "epochs", "time_budget", "seed")}
        print(f"tuned options: {tuned_options}", flush=True)
        default = retrain({}, args.retrain_budget, args.seeds, tmp / "retrain", "default")
        tuned = retrain(tuned_options, args.retrain_budget, args.seeds, tmp / "retrain", "tuned")
    out = {
        "default_acc": [round(statistics.mean(default), 4), round(statistics.pstdev(default), 4)],
        "tuned_acc": [round(statistics.mean(tuned), 4), round(statistics.pstdev(tuned), 4)],
        "default_runs": default, "tuned_runs": tuned, "tuned_options": tuned_options,
        "trials": pruned["trials"], "pruned": pruned["pruned"], "complete": pruned["complete"],
        "search_s": pruned["search_s"], "best_val": pruned["best_val"],
        "trials_without_pruning": unpruned["trials"], "best_val_without_pruning": unpruned["best_val"],
        "trial_budget": args.trial_budget, "retrain_budget": args.retrain_budget, "machine": info,
    }
    print(f"default {out['default_acc'][0]:.4f} ± {out['default_acc'][1]:.4f}, tuned {out['tuned_acc'][0]:.4f} ± "
          f"{out['tuned_acc'][1]:.4f} (test, {args.seeds} seeds, {args.retrain_budget} each)")
    print(f"command: {command()}")
    print(json.dumps(out))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
