"""Image + text fusion on a task that neither input solves alone: CIFAR-10 images with captions
that are right, ambiguous or wrong for known fractions of the items.

Each item of the shared CIFAR-10 PNG copy gets one caption, drawn reproducibly (seed 0):

- ``--right`` (default 50%): names the class, in one of several phrasings ("my cat yesterday");
- ``--vague`` (25%): names the class's confusable pair ("a cat or a dog", "a car or a truck");
- the rest (25%): names another class, drawn at random: wrong, and looks like a right one.

A text-only model can reach about right + vague/2 (62.5% with the defaults), an image-only model what
the images give in the budget; fusion has to learn when to trust which. Three runs of
``fusion:airnet`` with the same budget, ``--modalities image``, ``text`` and ``image,text``, then
``recog eval --ablate`` on the fused run (the fused model with one input switched off).

    python benchmarks/fusion.py [--budget 3m] [--per-class 2000] [--right 0.5 --vague 0.25]

Last line JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import tempfile
from pathlib import Path

from _common import cifar10_folder, command, machine, machine_line

import recog

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PAIRS = {"airplane": "a plane or a ship", "ship": "a plane or a ship", "automobile": "a car or a truck",
         "truck": "a car or a truck", "cat": "a cat or a dog", "dog": "a cat or a dog",
         "deer": "a deer or a horse", "horse": "a deer or a horse", "bird": "a bird or a frog",
         "frog": "a bird or a frog"}
PHRASES = ["a photo of a {}", "my {} yesterday", "look at this {}", "{} spotted today", "the {}"]
NAMES = {"airplane": "plane", "automobile": "car"}  # how people say it


def caption(label: str, rng: random.Random, right: float, vague: float) -> tuple[str, str]:
    """(caption, kind) for an item of class ``label``."""
    draw = rng.random()
    if draw < right:
        return rng.choice(PHRASES).format(NAMES.get(label, label)), "right"
    if draw < right + vague:
        return PAIRS[label], "vague"
    other = rng.choice([c for c in CLASSES if c != label])
    return rng.choice(PHRASES).format(NAMES.get(other, other)), "wrong"


def manifest(source: Path, dest: Path, per_class: int, right: float, vague: float) -> tuple[Path, dict[str, int]]:
    rng = random.Random(0)
    kinds: dict[str, int] = {}
    rows = []
    for split in ("train", "test"):
        for label in CLASSES:
            files = sorted((source / split / label).iterdir())
            for f in files[:per_class] if split == "train" else files:
                text, kind = caption(label, rng, right, vague)
                kinds[f"{split}_{kind}"] = kinds.get(f"{split}_{kind}", 0) + 1
                rows.append({"image": str(f), "label": label, "split": split, "text": text})
    dest.mkdir(parents=True, exist_ok=True)
    with (dest / "captions.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label", "split", "text"])
        writer.writeheader()
        writer.writerows(rows)
    return dest / "captions.csv", kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="3m", help="time budget of each of the three trainings")
    parser.add_argument("--per-class", type=int, default=2000, help="training images per class (test: all 1,000)")
    parser.add_argument("--right", type=float, default=0.5)
    parser.add_argument("--vague", type=float, default=0.25)
    parser.add_argument("--image-model", default="airnet")
    args = parser.parse_args()
    info = machine()
    print(machine_line(info), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data, kinds = manifest(cifar10_folder("png"), Path(tmp) / "data", args.per_class, args.right, args.vague)
        print(f"captions: {kinds}", flush=True)
        results = {}
        runs = {}
        for modalities in ("image", "text", "image,text"):
            run = recog.train(data=str(data), model=f"fusion:{args.image_model}", modalities=modalities,
                              time_budget=args.budget, project=str(Path(tmp) / "runs"), verbose=False)
            runs[modalities] = run
            results[modalities] = round(run.report["accuracy"], 4)
            print(f"trained on {modalities:>10}: test accuracy {run.report['accuracy']:.2%} "
                  f"({run.config.epochs} epochs, batch {run.config.batch_size})", flush=True)
        ablation = recog.evaluate(runs["image,text"].path, ablate=True, out=Path(tmp) / "eval", verbose=False)
        ablated = {r["inputs"]: round(r["value"], 4) for r in ablation["ablation"]}
        for inputs, value in ablated.items():
            print(f"fused model given {inputs:>10}: {value:.2%}", flush=True)
    best_single = max(results["image"], results["text"])
    print(f"fusion - best single modality: {100 * (results['image,text'] - best_single):+.2f} points", flush=True)
    print(f"command: {command()}")
    print(json.dumps({"benchmark": "fusion", "budget": args.budget, "per_class": args.per_class,
                      "right": args.right, "vague": args.vague, "captions": kinds,
                      "image_only": results["image"], "text_only": results["text"], "fusion": results["image,text"],
                      "ablation_of_fused_model": ablated, "fusion_beats_both": results["image,text"] > best_single,
                      "machine": info}))


if __name__ == "__main__":
    main()
