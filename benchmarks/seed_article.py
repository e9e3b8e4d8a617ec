"""The article reproduced, side by side with the article's own script, on the shared lossless PNG copy
of CIFAR-10: ``recog train --config configs/seed-article.yaml`` (seednet, SGD lr 0.001, momentum 0.9,
batch 100, 10 epochs, mean/std 0.5, no augmentation) against the article's loop as printed
(``benchmarks/_article_loop.py``: torchvision ImageFolder + DataLoader with 2 workers). Each runs as its
own process, timed from launch to exit, alternately ``--repeats`` times; the ratio is of the medians.
recog's one-time image decode (its cache) is made before the timed runs and not counted: a user pays it
once per dataset.

    python benchmarks/seed_article.py [--epochs 10] [--repeats 1]
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

from _common import ROOT, cifar10_folder, command, machine, machine_line


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="both loops' epochs (the article's: 10)")
    parser.add_argument("--repeats", type=int, default=1, help="alternate runs of each")
    args = parser.parse_args()
    data = cifar10_folder("png")
    config = ROOT / "configs" / "seed-article.yaml"
    with tempfile.TemporaryDirectory() as project:
        recog_cmd = [sys.executable, "-m", "recog", "train", "--config", str(config), "--data", str(data),
                     "--epochs", str(args.epochs), "--project", project, "--progress", "none"]
        warm = subprocess.run([*recog_cmd[:-2], "--epochs", "1", "--name", "warm", "--progress", "none"],
                              capture_output=True, text=True)  # fills the decode cache if it is cold
        if warm.returncode:
            sys.exit(warm.stderr[-3000:])
        article_cmd = [sys.executable, str(ROOT / "benchmarks" / "_article_loop.py"), str(data),
                       "--epochs", str(args.epochs)]
        rows = []
        for repeat in range(args.repeats):
            a_s, a_out = timed(article_cmd)
            article = json.loads(a_out.strip().splitlines()[-1])
            name = f"r{repeat}"
            r_s, r_out = timed([*recog_cmd, "--name", name])
            report = json.loads((Path(project) / name / "report.json").read_text())
            metrics = (Path(project) / name / "metrics.csv").read_text().splitlines()
            plan = next((line for line in r_out.splitlines() if line.startswith("plan:")), "")
            rows.append({"article_s": round(a_s, 2), "article_acc": article["accuracy"],
                         "article_train_s": article["train_s"], "recog_s": round(r_s, 2),
                         "recog_acc": report["accuracy"], "epochs": len(metrics) - 1, "plan": plan})
            print(f"repeat {repeat}: article {a_s:.1f} s ({article['accuracy']:.4f}), recog {r_s:.1f} s "
                  f"({report['accuracy']:.4f})", flush=True)
    info = machine()
    article_s = statistics.median(r["article_s"] for r in rows)
    recog_s = statistics.median(r["recog_s"] for r in rows)
    print(f"\nseed-article (the article's Net and recipe) on CIFAR-10, lossless PNG copy, {args.epochs} epochs, "
          f"each process timed from launch to exit")
    print(f"{'run':>4} {'article_s':>9} {'article_acc':>11} {'recog_s':>8} {'recog_acc':>9}")
    for i, r in enumerate(rows):
        print(f"{i:>4} {r['article_s']:>9.1f} {r['article_acc']:>11.4f} {r['recog_s']:>8.1f} {r['recog_acc']:>9.4f}")
    print(f"recog's plan: {rows[0]['plan']}")
    print(f"speed-up (median article / median recog): {article_s / recog_s:.2f}x")
    print(machine_line(info))
    print(f"command: {command()}")
    print(json.dumps({"benchmark": "seed_article", "article_s": article_s, "recog_s": recog_s,
                      "speedup": round(article_s / recog_s, 3), "runs": rows, "device": info["cpu"],
                      "cores": info["cores"], "torch": info["torch"], "command": command()}))


if __name__ == "__main__":
    main()
