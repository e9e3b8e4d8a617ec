"""The fast recipe (configs/cifar10-fast.yaml) on the shared lossless PNG copy of CIFAR-10, n seeds.

    python benchmarks/cifar10_speed.py [--seeds 3] [--first-seed 0] [--config configs/cifar10-4min.yaml]
                                       [--epochs N | --time-budget 4m] [--set key=value ...]

Per seed: test accuracy (plain and with TTA), training time (the epochs), final-evaluation time (TTA
and the report), other time (model set-up, whitening init, time-budget calibration, saving weights
and plots) and the total of the three. The one-time image decode is reported separately and not counted. Test accuracy after each epoch
(plain, no TTA) is measured only to report time-to-90% and time-to-93%: the weights are copied at
the end of each epoch and evaluated after the run, so that evaluation is neither counted nor taken
from a time budget, and the test set is never used for training or selection.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from _common import ROOT, cifar10_folder, command, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--config", default=str(ROOT / "configs" / "cifar10-fast.yaml"),
                        help="a config of the fast recipe (default: configs/cifar10-fast.yaml)")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--time-budget", help="size the epochs to this budget instead (e.g. 4m)")
    parser.add_argument("--kind", default="png", choices=["png", "jpg"], help="which shared copy")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other config overrides")
    args = parser.parse_args()

    import recog
    from recog.config import make_config
    from recog.data import Normalize, channel_stats, load_dataset
    from recog.data.stream import make_loader
    from recog.device import resolve_device, resolve_precision
    from recog.runs import data_options
    from recog.evaluation import collect_logits

    data = str(cifar10_folder(args.kind))
    overrides: dict[str, Any] = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    config = Path(args.config)
    cfg = make_config(config, data=data, **overrides)
    start = time.perf_counter()
    ds = load_dataset(data, None, 0.0, 0, **data_options(cfg, "cpu"))  # decode once (or read the cache)
    decode_s = time.perf_counter() - start
    device = resolve_device(cfg.device)
    mean, std = (cfg.mean, cfg.std) if cfg.mean else channel_stats(ds.train.images)  # as training measures them
    test_loader = make_loader(ds.test, ds.channels, ds.image_size, 1000, Normalize(mean, std, device), device,
                              channels_last=cfg.channels_last)
    precision = resolve_precision(cfg.precision, device, verbose=False)

    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        snapshots: list[tuple[float, dict[str, Any]]] = []  # (cumulative training seconds, weights)
        hook_s = 0.0
        trained = 0.0

        def track(row: dict[str, Any], snapshots: list = snapshots, seed: int = seed) -> None:
            # a copy of the weights only (milliseconds): under --time-budget the hook's time is the
            # budget's, so the curve is evaluated after training, outside the timed run
            nonlocal hook_s, trained
            t = time.perf_counter()
            trained += row["seconds"]
            snapshots.append((trained, {k: v.detach().clone() for k, v in row["model"].state_dict().items()}))
            print(f"  seed {seed} epoch {row['epoch']}: {row['seconds']:.1f}s", flush=True)
            hook_s += time.perf_counter() - t

        with tempfile.TemporaryDirectory() as project:
            t0 = time.perf_counter()
            run = recog.train(config, data=data, seed=seed, project=project, verbose=False, epochs=args.epochs,
                              time_budget=args.time_budget, on_epoch_end=track, **overrides)
            wall = time.perf_counter() - t0 - hook_s
        model = copy.deepcopy(run.model)
        curve: list[tuple[float, float]] = []  # (cumulative training seconds, plain test accuracy)
        for seconds, weights in snapshots:
            model.load_state_dict(weights)
            logits, labels = collect_logits(model, test_loader, device, precision)
            curve.append((seconds, (logits.argmax(1) == labels).float().mean().item()))
        print("  curve (training s, plain test accuracy): "
              + ", ".join(f"{s:.0f} {a:.4f}" for s, a in curve), flush=True)
        train_s = sum(r["seconds"] for r in run.metrics)
        plain = curve[-1][1]
        eval_s = run.report["seconds"]  # the final evaluation (with TTA) and its report
        runs.append({"seed": seed, "acc": plain, "tta_acc": run.report["accuracy"], "epochs": len(run.metrics),
                     "train_s": round(train_s, 2), "eval_s": eval_s, "other_s": round(wall - train_s - eval_s, 2),
                     "total_s": round(wall, 2),
                     "curve": [(round(s, 1), round(a, 4)) for s, a in curve]})
        print(f"seed {seed}: plain {plain:.4f}, TTA {run.report['accuracy']:.4f}, {len(run.metrics)} epochs, "
              f"train {train_s:.1f}s, total {wall:.1f}s", flush=True)

    def time_to(target: float) -> float | None:
        times = [next((s for s, a in r["curve"] if a >= target), None) for r in runs]
        return None if any(t is None for t in times) else round(statistics.median(times), 1)

    info = machine()
    accs, ttas = [r["acc"] for r in runs], [r["tta_acc"] for r in runs]
    spread = statistics.stdev if len(runs) > 1 else (lambda _: 0.0)
    gpu = f"{info['gpu']}, " if device.type == "cuda" else ""
    print(f"\nCIFAR-10, {config.name}, {args.kind.upper()} copy, {len(runs)} seeds "
          f"({gpu}{info['cpu']}, {info['cores']} cores, AMX {'yes' if info['amx'] else 'no'}, "
          f"AVX-512-BF16 {'yes' if info['avx512_bf16'] else 'no'}, torch {info['torch']})")
    print(f"{'seed':>4} {'epochs':>6} {'acc':>7} {'tta_acc':>8} {'train_s':>8} {'eval_s':>7} {'other_s':>7} "
          f"{'total_s':>8}")
    for r in runs:
        print(f"{r['seed']:>4} {r['epochs']:>6} {r['acc']:>7.4f} {r['tta_acc']:>8.4f} {r['train_s']:>8.1f} "
              f"{r['eval_s']:>7.1f} {r['other_s']:>7.1f} {r['total_s']:>8.1f}")
    print(f"mean acc {statistics.mean(accs):.4f} ± {spread(accs):.4f}, mean TTA acc {statistics.mean(ttas):.4f} "
          f"± {spread(ttas):.4f}, median total {statistics.median(r['total_s'] for r in runs):.1f}s")
    print(f"time to 90% (plain, median): {time_to(0.90)} s; to 93%: {time_to(0.93)} s; to 94%: {time_to(0.94)} s; "
          f"one-time decode {decode_s:.1f}s (not counted)")
    print(f"command: {command()}")
    print(json.dumps({
        "benchmark": "cifar10_speed", "mean_acc": statistics.mean(accs), "mean_tta_acc": statistics.mean(ttas),
        "std_tta_acc": spread(ttas), "median_total_s": statistics.median(r["total_s"] for r in runs),
        "runs": runs, "time_to_90_s": time_to(0.90), "time_to_93_s": time_to(0.93),
        "time_to_94_s": time_to(0.94), "decode_s": round(decode_s, 2),
        "device": info["gpu"] if device.type == "cuda" else info["cpu"], "cpu": info["cpu"], "cores": info["cores"],
        "amx": info["amx"], "torch": info["torch"],
        "command": command(),
    }))


if __name__ == "__main__":
    main()
