"""Training beside a competing CPU-bound process (issue "Speed, round 2": threads that fit the machine).

One busy-loop process (pure Python, one core) runs for the whole benchmark; beside it, side by side in
this script: ``recog train --data digits --epochs 3`` with defaults (the planner measures the thread
count), with ``--threads 2`` (PyTorch's default on a 2-core machine: one thread per core) and with
``--threads 1`` (the best count found by hand on the 2-core EPYC). Then the same three on the idle
machine. Prints the wall time from process launch to exit, the threads the plan chose and the test
accuracy of each; the last line is JSON.

    python benchmarks/busy_machine.py [--epochs 3] [--repeats 1]
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

from _common import command, machine, machine_line

SPIN = "while True: pass"


def train(epochs: int, flags: list[str]) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        cmd = [sys.executable, "-m", "recog", "train", "--data", "digits", "--epochs", str(epochs), "--progress",
               "none", *flags]
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit(proc.stderr[-2000:])
        report = json.loads((Path(folder) / "runs" / "train" / "report.json").read_text())
    plan = next((line for line in proc.stderr.splitlines() if line.startswith("plan:")), "")
    threads = re.search(r"(\d+) threads?,", plan)
    measured = next((line for line in proc.stderr.splitlines() if line.startswith("threads:")), "")
    return {"wall_s": round(wall, 1), "threads": int(threads.group(1)) if threads else None,
            "accuracy": round(report["accuracy"], 4), "measured": measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print(machine_line(machine()), flush=True)
    columns = {"defaults": [], "--threads 2": ["--threads", "2"], "--threads 1": ["--threads", "1"]}
    results: dict[str, dict[str, list[dict[str, object]]]] = {}
    for state in ("busy", "idle"):
        spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if state == "busy" else None
        try:
            time.sleep(1.0 if spinner else 0.0)
            for name, flags in columns.items():
                for _ in range(args.repeats):
                    row = train(args.epochs, flags)
                    results.setdefault(state, {}).setdefault(name, []).append(row)
                    print(f"{state:4} {name:12} {row['wall_s']:6.1f} s wall, {row['threads']} threads, "
                          f"test {row['accuracy']:.2%}  {row['measured']}", flush=True)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    busy = results["busy"]
    best = min(min(r["wall_s"] for r in busy[name]) for name in ("--threads 2", "--threads 1"))
    ratio = min(r["wall_s"] for r in busy["defaults"]) / best
    print(f"busy machine: defaults take {ratio:.2f}x the best thread count found by hand (goal: <= 1.2x)")
    print(f"command: {command()}")
    print(json.dumps({"machine": machine(), "results": results, "defaults_over_best_busy": round(ratio, 2)}))


if __name__ == "__main__":
    main()
