"""Budgets that hold: ``recog train --data SET --time-budget B`` as a user runs it, each a process timed
from launch to exit, on digits, a 28x28 greyscale set (CIFAR-10 as grey28, benchmarks/photos.py) and
the hymenoptera photos. Per run: wall time against the budget (goal: at most 5% or 3 s over, whichever
is larger), the first plan's step-time estimate against the step time measured over the run (goal:
within 15%; both from the run's summary line), what the planner chose and the accuracy.

    python benchmarks/budgets.py [--sets digits grey28 hymenoptera] [--seeds 1] [--budget digits=1m ...]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import command, hymenoptera, machine, machine_line

BUDGETS = {"digits": "1m", "grey28": "3m", "hymenoptera": "1m"}


def data_of(name: str) -> str:
    if name == "digits":
        return "digits"
    if name == "hymenoptera":
        return str(hymenoptera())
    from photos import proxy

    return str(proxy(name))


def run(name: str, budget: str, seed: int) -> dict[str, object]:
    from recog.config import parse_duration

    with tempfile.TemporaryDirectory() as folder:
        cmd = [sys.executable, "-m", "recog", "train", "--data", data_of(name), "--time-budget", budget,
               "--seed", str(seed), "--progress", "lines"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            return {"set": name, "error": proc.stderr.strip().splitlines()[-1][:300], "wall_s": round(wall, 1)}
        report = json.loads((Path(folder) / "runs" / "train" / "report.json").read_text())
    out = proc.stdout + proc.stderr
    drift = re.search(r"step time: (\d+) ms first estimate, (\d+) ms measured", out)
    seconds = parse_duration(budget)
    plan = next((line for line in proc.stderr.splitlines() if line.startswith("plan:")), "")
    how = next((line for line in proc.stderr.splitlines() if line.startswith(("transfer:", "resolution:"))), "")
    return {"set": name, "budget": budget, "seed": seed, "wall_s": round(wall, 1),
            "over_s": round(wall - seconds, 1), "over_pct": round(100 * (wall / seconds - 1), 1),
            "held": wall <= seconds + max(0.05 * seconds, 3.0),
            "estimate_ms": int(drift.group(1)) if drift else None, "measured_ms": int(drift.group(2)) if drift else None,
            "drift_pct": round(100 * (int(drift.group(2)) / int(drift.group(1)) - 1), 1) if drift else None,
            "accuracy": round(report["accuracy"], 4), "plan": plan, "choice": how,
            "replans": len(re.findall(r"^time budget: .* measured ->", proc.stderr, re.M))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--budget", nargs="*", default=[], metavar="SET=DURATION", help="other budgets")
    args = parser.parse_args()
    budgets = {**BUDGETS, **dict(b.split("=", 1) for b in args.budget)}
    rows = []
    for name in args.sets:
        for seed in range(args.seeds):
            row = run(name, budgets[name], seed)
            rows.append(row)
            if "error" in row:
                print(f"{name} seed {seed}: failed: {row['error']}", flush=True)
                continue
            print(f"{name} {row['budget']} seed {seed}: wall {row['wall_s']} s ({row['over_pct']:+.1f}%), step "
                  f"{row['estimate_ms']} ms estimated / {row['measured_ms']} ms measured ({row['drift_pct']:+}%), "
                  f"accuracy {row['accuracy']:.2%}; {row['replans']} re-plans", flush=True)
            for line in (row["choice"], row["plan"]):
                if line:
                    print(f"    {line}", flush=True)
    done = [r for r in rows if "error" not in r]
    print(f"\n{'set':<12} {'budget':>6} {'wall_s':>7} {'over':>7} {'held':>5} {'est_ms':>7} {'meas_ms':>7} "
          f"{'drift':>7} {'acc':>7}")
    for r in done:
        print(f"{r['set']:<12} {r['budget']:>6} {r['wall_s']:>7.1f} {r['over_pct']:>+6.1f}% {str(r['held']):>5} "
              f"{r['estimate_ms'] or '-':>7} {r['measured_ms'] or '-':>7} "
              f"{(str(r['drift_pct']) + '%') if r['drift_pct'] is not None else '-':>7} {r['accuracy']:>7.2%}")
    print(machine_line(machine()))
    print(f"command: {command()}")
    print(json.dumps({"benchmark": "budgets", "runs": rows, "command": command(), **machine()}))


if __name__ == "__main__":
    main()
