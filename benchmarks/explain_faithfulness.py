"""Do recog's explanation maps mean anything? Measured on real CIFAR-10 test images (the shared PNG
copy) with a model recog trained on it:

1. Deletion / insertion (Petsiuk et al., RISE, 2018): the predicted class's probability as the
   most-attributed pixels are removed first (set to the per-channel mean) or inserted first into the
   mean image, over 16 steps; the AUCs per method beside a random ordering of the pixels and a
   random map as coarse as Grad-CAM's (lower deletion and higher insertion are better), and the
   time per image of each method. A method is "recommended" when it beats random pixels on both
   curves and passes the randomisation check below.
2. Model randomisation (Adebayo et al., "Sanity Checks for Saliency Maps", 2018): Spearman rank
   correlation between each image's map from the trained model and from the same architecture
   re-initialised (3 seeds), beside a reference that should stay high (the trained model on the
   image with faint noise, sigma 2/255); and cascading randomisation from the head down, block by
   block. The tests' threshold (mean rho < 0.5) is set between the two distributions printed here.

    python benchmarks/explain_faithfulness.py [--run RUN] [--budget 6m] [--images 256] [--figure docs/explain-cifar10.png]

Without --run it trains recog's defaults on the full CIFAR-10 PNG training set for --budget first.
Last line JSON: {method: {"deletion_auc", "insertion_auc", "ms_per_image", ...}} including "random".
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import cifar10_folder, command, machine, machine_line

METHODS = ("gradcam", "ig", "saliency", "occlusion")
RANDOMISED_MAX_MEAN_RHO = 0.5  # tests/test_explain.py's threshold


def _test_images(clf, folder: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n/10 test images of each class (sorted file names): uint8 images and labels."""
    per_class = max(1, n // len(clf.classes))
    images, labels = [], []
    for k, cls in enumerate(clf.classes):
        for f in sorted((folder / "test" / cls).glob("*.png"))[:per_class]:
            images.append(clf.read(f))
            labels.append(k)
    return torch.stack(images), torch.tensor(labels)


def _randomised(clf, seed: int):
    from recog.inference import Classifier
    from recog.models import create_model

    torch.manual_seed(seed)
    m = clf.meta
    model = create_model(m["model"], len(m["classes"]), m["channels"], m["image_size"], **m.get("model_args", {}))
    return Classifier(model.eval(), m, clf.device)


def _blocks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The model's blocks from the head down: top-level children, sequences opened one level."""
    blocks = []
    for name, child in model.named_children():
        if isinstance(child, (torch.nn.Sequential, torch.nn.ModuleList)) and len(child) > 1:
            blocks += [(f"{name}.{i}", c) for i, c in enumerate(child)]
        else:
            blocks.append((name, child))
    return [(n, b) for n, b in reversed(blocks) if any(True for _ in b.parameters())]


def _stats(rho: torch.Tensor) -> str:
    ok = rho[~rho.isnan()]
    q = torch.quantile(ok, torch.tensor([0.1, 0.5, 0.9])).tolist() if len(ok) else [float("nan")] * 3
    return (f"mean {ok.mean():+.3f}  p10 {q[0]:+.3f}  median {q[1]:+.3f}  p90 {q[2]:+.3f}"
            + (f"  ({int(rho.isnan().sum())} constant maps left out)" if rho.isnan().any() else ""))


def _figure(path: Path, clf, images: torch.Tensor, maps: dict[str, torch.Tensor], preds: list[str],
            labels: list[str]) -> None:
    from recog.explanations import _display, _heat, _pyplot

    plt = _pyplot()
    n = len(images)
    fig, axes = plt.subplots(n, 1 + len(maps), figsize=(1.7 * (1 + len(maps)), 1.8 * n), squeeze=False)
    for i in range(n):
        image = _display(images[i])
        axes[i, 0].imshow(image, interpolation="nearest")
        axes[i, 0].set_title(f"{labels[i]} → {preds[i]}", fontsize=8)
        for j, (method, m) in enumerate(maps.items(), 1):
            _heat(axes[i, j], m[i].numpy(), method, image)
            if i == 0:
                axes[i, j].set_title(method, fontsize=9)
        for ax in axes[i]:
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a run folder trained on CIFAR-10 (default: train one first)")
    parser.add_argument("--budget", default="6m", help="time budget of that training")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--steps", type=int, default=16, help="deletion/insertion steps")
    parser.add_argument("--seeds", type=int, default=3, help="re-initialisations for the randomisation check")
    parser.add_argument("--figure", help="write an overlay grid of 8 test images here (PNG)")
    args = parser.parse_args()

    import recog
    from recog.explanations import attribute
    from recog.faithfulness import auc, deletion_insertion, rank_correlation
    from recog.inference import load

    info = machine()
    print(machine_line(info), flush=True)
    folder = cifar10_folder("png")
    run = args.run
    if run is None:
        run = str(recog.train(data=str(folder), time_budget=args.budget, project="runs/bench-explain").path)
    clf = load(run, "cpu")
    report = json.loads((Path(run) / "report.json").read_text())
    print(f"model: {clf.meta['model']} from {run}, test accuracy {report.get('accuracy', float('nan')):.4f}")
    images, labels = _test_images(clf, folder, args.images)
    with torch.no_grad():
        probs = clf.task.probabilities(clf(images).float())
    preds = probs.argmax(1)
    print(f"{len(images)} test images ({len(images) // len(clf.classes)} per class), accuracy on them "
          f"{(preds == labels).float().mean():.4f}; maps explain the predicted class\n")

    results: dict[str, dict[str, float]] = {}
    maps: dict[str, torch.Tensor] = {}
    layer, grid = None, (8, 8)
    for method in METHODS:
        started = time.perf_counter()
        result = recog.explain(clf, images, method=method, batch_size=64)
        seconds = time.perf_counter() - started
        maps[method], layer = result.maps, result.layer or layer
        grid = result.map_size if method == "gradcam" else grid
        results[method] = {"ms_per_image": round(1000 * seconds / len(images), 2)}
    torch.manual_seed(0)
    maps["random"] = torch.rand_like(maps["gradcam"])  # the baseline: random pixels first
    # and a random map as coarse as Grad-CAM's (its raw grid, upsampled the same way): scattered pixels
    # wreck a 32-px image whatever they are, so this tells a coarse map's content from its smoothness
    h, w = grid
    maps["random_coarse"] = F.interpolate(torch.rand(len(images), 1, h, w), size=tuple(images.shape[-2:]),
                                          mode="bilinear", align_corners=False)[:, 0]
    results["random"] = {"ms_per_image": 0.0}
    results["random_coarse"] = {"ms_per_image": 0.0}

    print(f"deletion / insertion AUC of the predicted class's probability ({args.steps} steps; Grad-CAM at {layer})")
    print(f"{'method':<11}{'deletion':>10}{'insertion':>11}{'ms/image':>10}")
    for method, m in maps.items():
        deletion, insertion = deletion_insertion(clf, images, m, preds, steps=args.steps)
        results[method].update(deletion_auc=round(auc(deletion), 4), insertion_auc=round(auc(insertion), 4))
        r = results[method]
        print(f"{method:<11}{r['deletion_auc']:>10.4f}{r['insertion_auc']:>11.4f}{r['ms_per_image']:>10.1f}", flush=True)
    for method in METHODS:
        r, rnd, coarse = results[method], results["random"], results["random_coarse"]
        r["beats_random"] = r["deletion_auc"] < rnd["deletion_auc"] and r["insertion_auc"] > rnd["insertion_auc"]
        r["beats_random_coarse"] = (r["deletion_auc"] < coarse["deletion_auc"]
                                    and r["insertion_auc"] > coarse["insertion_auc"])
    print(f"(random_coarse: a random {grid[0]}x{grid[1]} map upsampled like Grad-CAM's)")

    print("\nmodel randomisation: Spearman rho between the trained model's maps and ...")
    torch.manual_seed(0)
    noisy = (images.float() + 2 * torch.randn(images.shape)).round().clamp(0, 255).to(torch.uint8)
    for method in METHODS:
        rhos = torch.cat([rank_correlation(maps[method], attribute(_randomised(clf, seed), images, preds, method,
                                                                  layer if method == "gradcam" else None)[0])
                          for seed in range(1, args.seeds + 1)])
        ref = rank_correlation(maps[method], attribute(clf, noisy, preds, method,
                                                       layer if method == "gradcam" else None)[0])
        results[method].update(randomised_rho=round(float(rhos.nanmean()), 4), noisy_input_rho=round(float(ref.nanmean()), 4))
        print(f"  {method:<10} re-initialised ({args.seeds} seeds): {_stats(rhos)}")
        print(f"  {'':<10} same model, input + noise sigma 2/255: {_stats(ref)}", flush=True)
        r = results[method]
        r["recommended"] = r["beats_random"] and r["randomised_rho"] < RANDOMISED_MAX_MEAN_RHO

    print("\ncascading randomisation from the head down (mean rho with the trained model's maps)")
    blocks = _blocks(clf.model)
    print(f"{'re-initialised down to':<24}" + "".join(f"{m:>11}" for m in METHODS))
    cascade = {m: [] for m in METHODS}
    import copy

    model = copy.deepcopy(clf.model)
    from recog.inference import Classifier

    torch.manual_seed(1)
    for name, _ in blocks:
        for module in model.get_submodule(name).modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        stage = Classifier(model.eval(), clf.meta, clf.device)
        row = []
        for method in METHODS:
            m, _ = attribute(stage, images[:64], preds[:64], method, layer if method == "gradcam" else None)
            rho = float(rank_correlation(maps[method][:64], m).nanmean())
            cascade[method].append(round(rho, 4))
            row.append(rho)
        print(f"{name:<24}" + "".join(f"{v:>+11.3f}" for v in row), flush=True)
    for method in METHODS:
        results[method]["cascade_rho"] = cascade[method]

    if args.figure:
        pick = torch.arange(0, len(images), max(1, len(images) // 8))[:8]
        _figure(Path(args.figure), clf, images[pick], {m: maps[m][pick] for m in METHODS},
                [clf.classes[int(p)] for p in preds[pick]], [clf.classes[int(k)] for k in labels[pick]])
        print(f"\nfigure: {args.figure}")
    print(f"command: {command()}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
