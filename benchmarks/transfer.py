"""From scratch vs pretrained transfer at the same time budget, side by side on one machine.

Columns (each ``recog train --data SET --time-budget B --seed S`` with nothing else but the column's flag):
  default  the planner's choice (recog.engine.strategy: from scratch, probe, partial or full, timed here)
  scratch  --transfer none (the small/photos recipes from scratch, as before pretrained weights)
  probe    --transfer probe --pretrained efficientnet_lite0 (frozen backbone, cached features, an L2 head)
  partial  --transfer partial --pretrained efficientnet_lite0 (the last stages and the head on cached activations,
           the head from the probe's fit; the depth, and under a short budget the resolution, planned)
  full     --transfer full --pretrained efficientnet_lite0 (the whole network fine-tuned, AdamW, cosine)

Sets: ``hymenoptera`` (the shared ant/bee photos, 2m), ``photo224`` (CIFAR-10 upscaled to 224 px JPEG,
10m) and ``grey28`` (CIFAR-10 as 28x28 greyscale, 3m) of benchmarks/photos.py. Wall time is measured
from process launch to exit. The last line is JSON.

    python benchmarks/transfer.py --sets hymenoptera --seeds 0 1 2
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

import yaml

from _common import command, hymenoptera, machine, machine_line
from photos import proxy

BUDGETS = {"hymenoptera": "2m", "photo224": "10m", "grey28": "3m"}
COLUMNS = {"default": [], "scratch": ["--transfer", "none"],
           "probe": ["--transfer", "probe", "--pretrained", "efficientnet_lite0"],
           "partial": ["--transfer", "partial", "--pretrained", "efficientnet_lite0"],
           "full": ["--transfer", "full", "--pretrained", "efficientnet_lite0"]}


def run(data: Path, budget: str, seed: int, flags: list[str]) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        cmd = [sys.executable, "-m", "recog", "train", "--data", str(data), "--time-budget", budget,
               "--seed", str(seed), "--progress", "lines", *flags]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1][:300], "wall_s": round(wall, 1)}
        run_dir = Path(folder) / "runs" / "train"
        report = json.loads((run_dir / "report.json").read_text())
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    plan = next((line for line in proc.stderr.splitlines() if line.startswith("plan:")), "")
    return {"accuracy": round(report["accuracy"], 4), "split": report["split"], "wall_s": round(wall, 1),
            "transfer": cfg.get("transfer"), "unfreeze": cfg.get("unfreeze"), "pretrained": cfg.get("pretrained"),
            "image_size": cfg["image_size"],
            "cached": "features: cached" in plan, "plan": plan}


def describe(row: dict[str, object]) -> str:
    if "accuracy" not in row:
        return f"failed: {row['error']}"
    how = f"{row['transfer']} from {row['pretrained']}" if row["pretrained"] else "from scratch"
    return (f"{row['accuracy']:.2%} on {row['split']}, {row['wall_s']} s wall, {how} at {row['image_size']} px"
            f"{', features cached' if row['cached'] else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    parser.add_argument("--columns", nargs="+", default=list(COLUMNS), choices=list(COLUMNS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    import torch

    print(machine_line(machine(), timm=__import__("timm").__version__))
    print(f"torch threads {torch.get_num_threads()}; command: {command()}")
    results: dict[str, dict[str, list[dict[str, object]]]] = {}
    for name in args.sets:
        data = hymenoptera() if name == "hymenoptera" else proxy(name)
        results[name] = {}
        for column in args.columns:
            rows = []
            for seed in args.seeds:
                row = run(data, BUDGETS[name], seed, COLUMNS[column])
                rows.append(row)
                print(f"{name} {column} seed {seed}: {describe(row)}", flush=True)
            results[name][column] = rows
    print()
    print(f"| set (budget) | {' | '.join(args.columns)} |")
    print(f"|---|{'---|' * len(args.columns)}")
    summary: dict[str, dict[str, object]] = {}
    for name, columns in results.items():
        cells = []
        for column in args.columns:
            accs = [r["accuracy"] for r in columns[column] if "accuracy" in r]
            walls = [r["wall_s"] for r in columns[column]]
            med = statistics.median(accs) if accs else None
            summary.setdefault(name, {})[column] = {"median": med, "accuracies": accs, "max_wall_s": max(walls)}
            cells.append(f"{med:.2%} (median of {len(accs)}; max wall {max(walls):.0f} s)" if accs else "failed")
        print(f"| {name} ({BUDGETS[name]}) | {' | '.join(cells)} |")
    print(json.dumps({"machine": machine(), "results": summary}))


if __name__ == "__main__":
    main()
