"""Zero-shot classes with a text head: train on CIFAR-10 with two classes held out entirely, then
report on the test set

- ``seen_acc``: the text head on the 8 seen classes (its final report);
- ``seen_acc_standard_head``: the linear head trained on the same 8 classes with the same budget;
- ``unseen_pair_acc``: the text head choosing between the 2 held-out classes only (chance 50%);
- ``generalised_acc``: the text head choosing among all 10 classes, on all 10 classes' test images.

    python benchmarks/zero_shot_cifar10.py [--epochs 6 | --budget 90s] [--per-class 500]
                                           [--pairs cat/truck,dog/ship,bird/automobile]

Data: the shared CIFAR-10 PNG copy (``--per-class`` training images per seen class, all 1,000 test
images per class), as links in a temporary folder. One JSON line per pair, then a summary line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import cifar10_folder, command, machine, machine_line

import recog
from recog.text import DEFAULT_PROMPT

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def link_folder(source: Path, dest: Path, classes: list[str], per_class: int | None, splits=("train", "test")) -> Path:
    for split in splits:
        for name in classes:
            (dest / split / name).mkdir(parents=True)
            files = sorted((source / split / name).iterdir())
            for f in files[:per_class] if split == "train" and per_class else files:
                (dest / split / name / f.name).symlink_to(f)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6, help="the same for both heads")
    parser.add_argument("--budget", help="a time budget for each training instead of --epochs")
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--pairs", default="cat/truck,dog/ship,bird/automobile")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    args = parser.parse_args()
    source = cifar10_folder("png")
    print(f"prompts: {' | '.join(args.prompt.split('|'))}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        everything = link_folder(source, tmp / "all", CLASSES, None, splits=("test",))
        for pair in args.pairs.split(","):
            held = pair.split("/")
            seen = [c for c in CLASSES if c not in held]
            data = link_folder(source, tmp / f"seen-{'-'.join(held)}", seen, args.per_class)
            common = dict(data=str(data), project=str(tmp / "runs"), verbose=False,
                          **({"time_budget": args.budget} if args.budget else {"epochs": args.epochs}))
            text = recog.train(head="text", prompt=args.prompt, **common)
            standard = recog.train(**common)
            unseen = recog.evaluate(text.path, data=str(link_folder(source, tmp / f"unseen-{'-'.join(held)}", held,
                                                                    None, splits=("test",)) / "test"),
                                    out=tmp / "eval" / pair.replace("/", "-"), verbose=False)
            general = recog.evaluate(text.path, data=str(everything / "test"), classes=CLASSES,
                                     out=tmp / "eval-all" / pair.replace("/", "-"), verbose=False)
            r = {"held_out": held, "seen_acc": round(text.report["accuracy"], 4),
                 "seen_acc_standard_head": round(standard.report["accuracy"], 4),
                 "unseen_pair_acc": round(unseen["accuracy"], 4), "generalised_acc": round(general["accuracy"], 4),
                 "epochs_text": text.config.epochs, "epochs_standard": standard.config.epochs}
            results.append(r)
            print(f"held out {pair}: seen 8 classes {r['seen_acc']:.3f} (standard head {r['seen_acc_standard_head']:.3f}), "
                  f"unseen pair {r['unseen_pair_acc']:.3f} (chance 0.5), all 10 {r['generalised_acc']:.3f}", flush=True)
            print(json.dumps(r), flush=True)
    print(machine_line(machine()))
    print(f"command: {command()}")
    print(json.dumps({"benchmark": "zero_shot_cifar10", "budget": args.budget or f"{args.epochs} epochs",
                      "per_class": args.per_class,
                      "prompt": args.prompt, "results": results, "machine": machine()}))


if __name__ == "__main__":
    main()
