"""The README's quick start, timed: ``recog train`` (bundled digits, airnet, 20 epochs) in a fresh
folder, as a new user runs it. Prints the wall time (process start to exit) and the test accuracy.

    python benchmarks/quick_start.py [--repeats 3]

The tests check that it reaches 97%; how long it takes is measured here, not asserted there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import command, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "recog", "train"], cwd=folder, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                sys.exit(proc.stderr[-2000:])
            report = json.loads((Path(folder) / "runs" / "train" / "report.json").read_text())
        runs.append({"wall_s": round(wall, 1), "accuracy": report["accuracy"]})
        print(f"recog train: {wall:.1f}s, test accuracy {report['accuracy']:.4f}", flush=True)
    info = machine()
    median = statistics.median(r["wall_s"] for r in runs)
    print(f"median {median:.1f}s over {len(runs)} runs; machine: {info['cpu']}, {info['cores']} cores, "
          f"AVX-512-BF16 {info['avx512_bf16']}, torch {info['torch']}")
    print(f"command: {command()}")
    print(json.dumps({"benchmark": "quick_start", "median_wall_s": median, "runs": runs, "machine": info}))


if __name__ == "__main__":
    main()
