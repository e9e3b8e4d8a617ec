"""Candidate models for the photos recipe, side by side in one process: training and evaluation
images/s at photo resolutions, each with the optimizer and precision it would train with, timed
by the planner's own code (recog.engine.plan.time_per_image: a warm-up and two steps of 32
synthetic images), plus parameters and multiply-adds.

    python benchmarks/photo_models.py [--sizes 96 128 160] [--repeats 2]
    python benchmarks/photo_models.py --accuracy [--data PHOTOS] [--sizes 128] [--budget 2m]

``--accuracy``: each candidate trained with ``recog train --data PHOTOS --image-size S
--time-budget B`` (the planner fills the rest, as for a user who names the model), on the shared
hymenoptera photos by default, with their val accuracy. (Hymenoptera is small: 153 val photos, so a
difference under ~5 points is noise.)

The photos recipe's net is airnet with an s x s-patch stem (s = size / 32), so that its groups
see ~32 px whatever the resolution; the others downsample with torchvision's stems. Last line JSON.
"""

from __future__ import annotations

import argparse
import json

from _common import command, machine, machine_line

CANDIDATES = {
    "airnet, whitened patch stem (photos recipe)": {"model": "airnet"},
    "airnet, learned patch stem": {"model": "airnet", "model_args": {"stem": "conv"}},
    "tv:resnet18": {"model": "tv:resnet18"},
    "tv:mobilenet_v3_small": {"model": "tv:mobilenet_v3_small"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[96, 128, 160])
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all candidates (the best is kept)")
    parser.add_argument("--accuracy", action="store_true", help="train each candidate and report its accuracy")
    parser.add_argument("--data", help="--accuracy: a photo folder (default: the shared hymenoptera photos)")
    parser.add_argument("--budget", default="2m", help="--accuracy: the time budget of each training")
    parser.add_argument("--only", nargs="+", help="--accuracy: the candidates whose names contain these")
    args = parser.parse_args()
    if args.accuracy:
        return accuracy(args)
    from recog.data import Probe
    from recog.engine import plan
    from recog.models import create_model, model_stats

    info = machine()
    print(machine_line(info), flush=True)
    probe = Probe(side=max(args.sizes), channels=3, train=9500, val=500, test=3900)
    rows = []
    for size in args.sizes:
        for name, given in CANDIDATES.items():
            recipe = plan.recipe_for(size, given)
            sized = {**given}
            if given["model"] == "airnet":  # the planner's stem stride, under the candidate's own arguments
                planned = plan.sizing(recipe, {"model": "airnet"}, probe, size).get("model_args", {})
                sized["model_args"] = {**planned, **given.get("model_args", {})}
            best = min((plan.time_per_image(sized, probe, size) for _ in range(args.repeats)), key=lambda t: t[0])
            model = create_model(given["model"], 10, 3, size, **sized.get("model_args", {}))
            params, macs = model_stats(model, 3, size)
            row = {"model": name, "size": size, "train_img_s": round(1 / best[0]), "eval_img_s": round(1 / best[1]),
                   "params_m": round(params / 1e6, 2), "gmacs": round(macs / 1e9, 3)}
            rows.append(row)
            print(f"{size:>4} px  {name:<44} train {row['train_img_s']:>6} img/s  eval {row['eval_img_s']:>6} img/s  "
                  f"{row['params_m']:>6} M params  {row['gmacs']:>6} GMACs", flush=True)
    print(f"command: {command()}")
    print(json.dumps({"benchmark": "photo_models", "rows": rows, "machine": info}))


def accuracy(args: argparse.Namespace) -> None:
    import tempfile

    import recog
    from _common import hymenoptera

    info = machine()
    print(machine_line(info), flush=True)
    data = args.data or str(hymenoptera())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for name, given in CANDIDATES.items():
                if given["model"] == "airnet":  # the planner's stem stride under the candidate's own arguments
                    from recog.engine.plan import stem_stride

                    given = {**given, "model_args": {"stem_stride": stem_stride(size), **given.get("model_args", {})}}
                if args.only and not any(o in name for o in args.only):
                    continue
                run = recog.train(data=data, image_size=size, time_budget=args.budget, project=tmp, verbose=False,
                                  **given)
                epochs = run.config.steps / -(-run.config.steps // run.config.epochs)
                row = {"model": name, "size": size, "accuracy": round(run.report["accuracy"], 4),
                       "split": run.report["split"], "epochs": round(epochs, 1), "recipe": run.config.recipe,
                       "batch_size": run.config.batch_size}
                rows.append(row)
                print(f"{size:>4} px  {name:<44} {row['accuracy']:.2%} on {row['split']} ({row['epochs']} epochs, "
                      f"recipe {row['recipe']}, batch {row['batch_size']})", flush=True)
    print(f"command: {command()}")
    print(json.dumps({"benchmark": "photo_models_accuracy", "data": data, "budget": args.budget, "rows": rows,
                      "machine": info}))


if __name__ == "__main__":
    main()
