"""Any benchmark script at a past commit and today, side by side: the script runs from a ``git worktree``
of the commit (its ``src`` on PYTHONPATH, its own ``benchmarks/`` and ``configs/``: the old code with its
own defaults) and then from today's tree, alternately ``--repeats`` times, so that a change in the
machine's speed falls on both. Each run's own output is shown; the last line is JSON with both runs'
JSON lines (each benchmark's last line).

    python benchmarks/side_by_side.py --start b71d0d0 transfer.py --sets grey28 --columns default --seeds 0
    python benchmarks/side_by_side.py --start b71d0d0 --repeats 2 photos.py --parts c

(``speed_vs_start.py`` is the same for ``cifar10_speed.py``, with its seeds interleaved and its ratio.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _common import ROOT, command, machine, machine_line, worktree


def run(root: Path, script: str, args: list[str]) -> tuple[str, dict[str, object] | None]:
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    path = root / "benchmarks" / script
    if not path.is_file():
        sys.exit(f"{script} is not in {root / 'benchmarks'}")
    done = subprocess.run([sys.executable, str(path), *args], env=env, capture_output=True, text=True,
                          cwd=root)
    if done.returncode:
        sys.exit(f"{script} failed in {root}:\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    try:
        return "\n".join(lines[:-1]), json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return done.stdout, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", required=True, help="the commit to compare with")
    parser.add_argument("--repeats", type=int, default=1, help="old, new, old, new ... this many times each")
    parser.add_argument("script", help="a script in benchmarks/ (e.g. transfer.py)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments, the same for both")
    args = parser.parse_args()
    results: dict[str, list[object]] = {"old": [], "new": []}
    with worktree(args.start) as old:
        for repeat in range(args.repeats):
            for which, root in (("old", old), ("new", ROOT)):
                text, result = run(root, args.script, args.args)
                results[which].append(result)
                label = args.start if which == "old" else "today"
                print(f"=== repeat {repeat}, {label}: {args.script} {' '.join(args.args)}\n{text}\n", flush=True)
    print(machine_line(machine()))
    print(f"command: {command()}")
    print(json.dumps({"benchmark": "side_by_side", "start": args.start, "script": args.script, "args": args.args,
                      "results": results, "command": command(), **machine()}))


if __name__ == "__main__":
    main()
