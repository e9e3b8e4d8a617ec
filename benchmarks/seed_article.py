"""The article reproduced: configs/seed-article.yaml (seednet, SGD lr 0.001, momentum 0.9, batch 100,
10 epochs, mean/std 0.5) on the shared lossless PNG copy of CIFAR-10. Prints time and test accuracy.

    python benchmarks/seed_article.py [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from _common import ROOT, cifar10_folder, command, machine

import recog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's 10 epochs")
    args = parser.parse_args()
    data = cifar10_folder("png")
    with tempfile.TemporaryDirectory() as project:
        start = time.perf_counter()
        run = recog.train(ROOT / "configs" / "seed-article.yaml", data=str(data), project=project,
                          epochs=args.epochs, verbose=False)
        total = time.perf_counter() - start
    train_s = sum(r["seconds"] for r in run.metrics)
    info = machine()
    print("\nseed-article (the article's Net and recipe) on CIFAR-10, lossless PNG copy")
    print(f"{'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'seconds':>8}")
    for r in run.metrics:
        print(f"{r['epoch']:>5} {r['train_loss']:>10.4f} {r['train_acc']:>9.4f} {r['seconds']:>8.1f}")
    print(f"test accuracy {run.report['accuracy']:.4f} on {run.report['num_images']} images")
    print(f"training {train_s:.1f}s; total with image decode and evaluation {total:.1f}s")
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}")
    print(f"command: {command()}")
    print(json.dumps({"benchmark": "seed_article", "test_accuracy": run.report["accuracy"],
                      "train_s": round(train_s, 2), "total_s": round(total, 2), "epochs": len(run.metrics),
                      "device": info["cpu"], "cores": info["cores"], "torch": info["torch"]}))


if __name__ == "__main__":
    main()
