"""The fast recipe today against the recipe at a past commit, side by side: each seed runs
``benchmarks/cifar10_speed.py --seeds 1 --first-seed S`` for the old code (a ``git worktree`` of the
commit, its ``src`` on PYTHONPATH and its own ``configs/``: the old code with its own recipe files and
defaults) and then for today's, alternately, so that a change in the machine's speed falls on both.

    python benchmarks/speed_vs_start.py --start b71d0d0 [--seeds 3] [--config configs/cifar10-fast.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _common import ROOT, command, machine, machine_line, worktree

SCRIPT = ROOT / "benchmarks" / "cifar10_speed.py"


def one(src: Path, config: Path, seed: int, extra: list[str]) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, str(SCRIPT), "--seeds", "1", "--first-seed", str(seed), "--config",
                           str(config), *extra], env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])["runs"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", required=True, help="the commit to compare with")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--config", default="configs/cifar10-fast.yaml", help="relative to each checkout")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for today's runs only")
    args = parser.parse_args()
    with worktree(args.start) as old:
        rows = {"old": [], "new": []}
        for seed in range(args.seeds):
            for which, root in (("old", old), ("new", ROOT)):
                r = one(root / "src", root / args.config, seed,
                        ["--set", *args.set] if which == "new" and args.set else [])
                rows[which].append(r)
                print(f"seed {seed} {which}: TTA {r['tta_acc']:.4f} (plain {r['acc']:.4f}), train {r['train_s']} s, "
                      f"eval {r['eval_s']} s, other {r['other_s']} s, total {r['total_s']} s", flush=True)
    summary = {}
    for which in ("old", "new"):
        rs = rows[which]
        summary[which] = {"mean_tta_acc": statistics.mean(r["tta_acc"] for r in rs),
                          "mean_acc": statistics.mean(r["acc"] for r in rs),
                          "median_total_s": statistics.median(r["total_s"] for r in rs),
                          "mean_total_s": statistics.mean(r["total_s"] for r in rs)}
    ratio = summary["new"]["mean_total_s"] / summary["old"]["mean_total_s"]
    print(f"\nCIFAR-10 fast recipe, {args.config}, {args.seeds} seeds, old = {args.start}, new = today's tree")
    print(f"{'':>4} {'TTA acc (mean)':>15} {'plain':>7} {'total s (mean)':>15} {'median':>7}")
    for which in ("old", "new"):
        s = summary[which]
        print(f"{which:>4} {s['mean_tta_acc']:>15.4f} {s['mean_acc']:>7.4f} {s['mean_total_s']:>15.1f} "
              f"{s['median_total_s']:>7.1f}")
    print(f"time ratio new / old (mean totals): {ratio:.3f}")
    print(machine_line(machine()))
    print(f"command: {command()}")
    print(json.dumps({"benchmark": "speed_vs_start", "start": args.start, "ratio": round(ratio, 4),
                      "summary": summary, "runs": rows, "command": command(), **machine()}))


if __name__ == "__main__":
    main()
