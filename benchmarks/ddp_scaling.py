"""DDP scaling: the same training run on 1 and on N processes of this machine (``recog train --nproc``),
images per second and seconds per epoch, with the cores shared out so they are not oversubscribed
(threads per process = cores // processes).

    python benchmarks/ddp_scaling.py [--procs 1,2] [--epochs 1] [--model airnet] [--recipe fast]

Data: the shared CIFAR-10 PNG copy (50,000 training images), decoded once into the cache before the
timed runs. The figures are those of the last epoch (with one epoch, its first steps include the warm-up). Last line JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import cifar10_folder, command, machine, machine_line

EPOCH = re.compile(r"epoch (\d+)/(\d+): .* ([\d.]+) img/s, ([\d.]+)s")


def run(procs: int, args: argparse.Namespace, data: Path, threads: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as project:
        cmd = [sys.executable, "-m", "recog", "train", "--data", str(data), "--model", args.model, "--recipe",
               args.recipe, "--epochs", str(args.epochs), "--project", project, "--progress", "lines",
               "--final-eval", "off", "--batch-size", str(args.batch_size)]
        if procs > 1:
            cmd += ["--nproc", str(procs)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    epochs = EPOCH.findall(done.stderr)
    last = epochs[-1]
    return {"processes": procs, "threads_per_process": threads, "images_per_s": float(last[2]),
            "epoch_s": float(last[3]), "wall_s": round(wall, 1), "val_acc_epochs": len(epochs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--model", default="airnet")
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--batch-size", type=int, default=512, help="the global batch (split over the processes)")
    args = parser.parse_args()
    info = machine()
    cores = int(info["cores"])
    data = cifar10_folder("png")
    # decode once into the cache, untimed (the timed runs then map it)
    subprocess.run([sys.executable, "-m", "recog", "train", "--data", str(data), "--model", "seednet", "--steps", "1",
                    "--final-eval", "off", "--project", tempfile.mkdtemp(), "--progress", "none"],
                   check=True, capture_output=True)
    results = []
    for procs in (int(p) for p in args.procs.split(",")):
        threads = max(1, cores // procs)
        r = run(procs, args, data, threads)
        results.append(r)
        print(f"{procs} process{'es' if procs > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}: "
              f"{r['images_per_s']:.0f} img/s, {r['epoch_s']:.1f} s/epoch (last of {r['val_acc_epochs']}), "
              f"{r['wall_s']:.0f} s in all", flush=True)
    base = results[0]["images_per_s"]
    for r in results[1:]:
        r["speedup"] = round(r["images_per_s"] / base, 3)
        print(f"{r['processes']} processes vs {results[0]['processes']}: {r['speedup']:.2f}x images/s")
    print(machine_line(info))
    print(f"command: {command()}")
    print(json.dumps({"benchmark": "ddp_scaling", "model": args.model, "recipe": args.recipe,
                      "global_batch": args.batch_size, "results": results, "machine": info}))


if __name__ == "__main__":
    main()
