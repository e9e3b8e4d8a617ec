"""Defaults and a time budget, nothing else, on photo-sized and small greyscale images
(issue "Fast by default, at any image size"). Each part runs ``recog train`` in a subprocess as a
new user would and reads its report and plan.

    python benchmarks/photos.py                    # all three parts
    python benchmarks/photos.py --parts a c        # some of them
    python benchmarks/photos.py --budget-b 10m --budget-c 3m

(a) the shared hymenoptera photos (245 training photos of varying size; too small for a record):
    accuracy on its val split and the time, with ``--time-budget 2m``.
(b) a 10-class proxy of 224-px photos: the shared CIFAR-10 (PNG) upscaled to 224x224 (bicubic)
    and saved as JPEG quality 95, built once into the cache folder: the resolution and epochs the
    planner chose, images/s and the test accuracy for ``--time-budget 10m`` with defaults.
(c) a 28x28 greyscale proxy of the same CIFAR-10 (ITU-R 601 luma, bilinear 32 -> 28, PNG):
    defaults against ``--recipe fast`` at ``--time-budget 3m`` each.

Decoding is not part of a budget (it happens once; later runs read the cache), so each part
prints the wall time too. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _common import CACHE, cifar10_folder, command, hymenoptera, machine


def _convert(job: tuple[str, str, str]) -> None:
    from PIL import Image

    src, dst, kind = job
    with Image.open(src) as im:
        if kind == "photo224":
            im.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC).save(dst, quality=95)
        else:  # grey28
            im.convert("L").resize((28, 28), Image.Resampling.BILINEAR).save(dst)


def proxy(kind: str) -> Path:
    """CIFAR-10 (PNG) converted once into the cache: ``photo224`` or ``grey28``."""
    target = CACHE / "bench" / f"cifar10-{kind}"
    if (target / "test").is_dir():
        return target
    source = cifar10_folder("png")
    tmp = target.with_name(target.name + ".partial")
    suffix = ".jpg" if kind == "photo224" else ".png"
    jobs = []
    for src in sorted(source.rglob("*.png")):
        dst = tmp / src.relative_to(source).with_suffix(suffix)
        dst.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((str(src), str(dst), kind))
    print(f"building {target} from {source} ({len(jobs)} images)…", flush=True)
    with ProcessPoolExecutor() as pool:
        list(pool.map(_convert, jobs, chunksize=256))
    tmp.rename(target)
    return target


def train(data: Path, *flags: str) -> dict[str, object]:
    """``recog train --data DATA FLAGS`` in a fresh project folder: report, plan and timings."""
    with tempfile.TemporaryDirectory() as folder:
        cmd = [sys.executable, "-m", "recog", "train", "--data", str(data), "--progress", "lines", *flags]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        run = Path(folder) / "runs" / "train"
        report = json.loads((run / "report.json").read_text())
        import yaml

        cfg = yaml.safe_load((run / "config.yaml").read_text())
    said = ("resolution:", "plan:", "time budget ", "training and")  # not the per-epoch re-plans
    plan = [line for line in proc.stderr.splitlines() if line.startswith(said)]
    speeds = [float(m) for m in re.findall(r"(\d+) img/s", proc.stderr)]
    result = {"flags": " ".join(flags) or "(defaults)", "accuracy": round(report["accuracy"], 4),
              "split": report.get("split"), "recipe": cfg["recipe"], "image_size": cfg["image_size"],
              "epochs": round(cfg["steps"] / max(1, -(-int(cfg["steps"]) // int(cfg["epochs"]))), 2),
              "batch_size": cfg["batch_size"], "precision": cfg["precision"],
              "train_img_s": round(sum(speeds) / len(speeds)) if speeds else None, "wall_s": round(wall, 1),
              "plan": plan}
    print(f"  {result['flags']}: {result['accuracy']:.2%} on {result['split']} — {cfg['recipe']} at "
          f"{cfg['image_size']} px, ~{result['epochs']} epochs, batch {cfg['batch_size']}, "
          f"{result['train_img_s']} img/s, {wall:.0f} s wall", flush=True)
    for line in plan:
        print(f"    {line}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    parser.add_argument("--budget-a", default="2m")
    parser.add_argument("--budget-b", default="10m")
    parser.add_argument("--budget-c", default="3m")
    args = parser.parse_args()
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, AMX {info['amx']}, AVX-512-BF16 {info['avx512_bf16']}, "
          f"GPU {info['gpu']}, torch {info['torch']}", flush=True)
    results: dict[str, object] = {}
    if "a" in args.parts:
        print(f"(a) hymenoptera photos, --time-budget {args.budget_a}", flush=True)
        results["a"] = train(hymenoptera(), "--time-budget", args.budget_a)
    if "b" in args.parts:
        data = proxy("photo224")
        print(f"(b) CIFAR-10 upscaled to 224 px (JPEG), --time-budget {args.budget_b}", flush=True)
        results["b"] = train(data, "--time-budget", args.budget_b)
    if "c" in args.parts:
        data = proxy("grey28")
        print(f"(c) CIFAR-10 as 28x28 greyscale, --time-budget {args.budget_c}: defaults vs --recipe fast", flush=True)
        defaults = train(data, "--time-budget", args.budget_c)
        fast = train(data, "--time-budget", args.budget_c, "--recipe", "fast")
        results["c"] = {"defaults": defaults, "fast": fast,
                        "gap_points": round(100 * (fast["accuracy"] - defaults["accuracy"]), 2)}
    print(f"command: {command()}")
    print(json.dumps({"benchmark": "photos", "results": results, "machine": info}))


if __name__ == "__main__":
    main()
