"""Transfer by linear probe: the pretrained backbone stays frozen, its pooled features are computed
once per image and view and cached on disk, and only the classifier head trains, on those features.

On a 2-core CPU a frozen EfficientNet-Lite0 runs forward at ~85 images/s in bf16, while training it
end to end runs at 14-18: for a few hundred photos the probe's one feature pass takes seconds and its
head trains in well under a second, where one epoch of a full fine-tune takes tens of seconds. The
features are cached (``$RECOG_CACHE/features``) keyed by the backbone's weights, the images' bytes,
the size and the view, so a rerun, a tuning trial or ``--resume`` skips the pass.

The views are the image as it is and its mirror (training: both, as augmentation; validation: the
image as it is). The run's weights are the whole model (backbone + the trained head), so evaluation,
prediction, export and serving read it like any other run.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from recog.config import is_fusion
from recog.data.augment import flip
from recog.data.stream import make_loader
from recog.device import autocast, eval_mode
from recog.engine.checkpoint import LoopState
from recog.engine.distributed import is_main
from recog.models import head, headless

if TYPE_CHECKING:
    from recog.data.splits import AnySplit
    from recog.engine.build import Training
    from recog.engine.fit import Hooks

VIEWS = ("plain", "flip")


def cache_dir() -> Path:
    return Path(os.environ.get("RECOG_CACHE", Path.home() / ".cache" / "recog")) / "features"


def _backbone_id(model: nn.Module, head_name: str) -> str:
    """A digest of the backbone's weights (the head left out): features depend on nothing else of it."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if not name.startswith(head_name + "."):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def _split_id(split: AnySplit) -> str:
    """A digest of a split's images: their decoded bytes in memory, or their files' paths, sizes and times."""
    digest = hashlib.sha256()
    images = getattr(split, "images", None)
    if images is not None:
        digest.update(images.contiguous().cpu().numpy().tobytes())
    else:
        for p in split.paths:
            st = os.stat(p)
            digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:24]


def _parts(t: Training, at: str = "pooled") -> list[tuple[str, AnySplit, str, Path]]:
    """(split name, split, view, cache file) of every feature set the probe uses: the training images
    and (with flips) their mirrors, the val images. ``at`` names where the backbone is read (its pooled
    features, or a partial fine-tune's stage boundary). The backbone and each split are digested once."""
    cfg = t.config
    common = [cfg.model, _backbone_id(t.model, head(t.model)[0]), str(t.data.image_size), str(t.data.channels),
              ",".join(f"{v:.6g}" for v in (*cfg.mean, *cfg.std)), cfg.precision, at]
    splits = [("train", t.data.train, VIEWS if cfg.flip else VIEWS[:1])]
    if t.data.val is not None and len(t.data.val):
        splits.append(("val", t.data.val, VIEWS[:1]))
    parts = []
    for name, split, views in splits:
        digest = _split_id(split)
        for view in views:
            key = "|".join([*common, digest, view])
            parts.append((name, split, view, cache_dir() / (hashlib.sha256(key.encode()).hexdigest()[:32]
                                                            + ".safetensors")))
    return parts


def feature_status(t: Training, at: str = "pooled") -> str:
    """For the plan line: whether the feature pass is cached, and over how many images."""
    parts = _parts(t, at)
    images = sum(len(split) for _, split, _, _ in parts)
    cached = all(path.is_file() for _, _, _, path in parts)
    return f"features: {'cached' if cached else 'to compute'} ({images} images)"


def feature_pass(t: Training, net: nn.Module, parts: list[tuple[str, AnySplit, str, Path]],
                 dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """``net``'s outputs (frozen, eval mode) for every part, read from the cache where they are: a
    dict ``"train:plain"``, ``"train:flip"``, ``"val:plain"`` -> tensor. Says how long it took."""
    started = time.perf_counter()
    feats = {f"{key}:{view}": _features(t, net, split, view, path, dtype) for key, split, view, path in parts}
    if t.config.verbose and is_main():
        n = sum(len(f) for f, _ in feats.values())
        cached = all(c for _, c in feats.values())
        seconds = time.perf_counter() - started
        print(f"features of {n} images {'read from the cache' if cached else 'computed'} in {seconds:.1f} s"
              f"{'' if cached else f' ({n / max(seconds, 1e-9):.0f} images/s)'}", file=sys.stderr)
    return {k: f for k, (f, _) in feats.items()}


def train_features(feats: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training images' features of :func:`feature_pass`, view after view (as :func:`fit_linear` takes them)."""
    return torch.cat([f for k, f in feats.items() if k.startswith("train:")])


@torch.no_grad()
def _features(t: Training, net: nn.Module, split: AnySplit, view: str, path: Path,
              dtype: torch.dtype) -> tuple[torch.Tensor, bool]:
    """(``net``'s outputs for ``split`` in ``view``, whether they came from the cache file ``path``)."""
    from safetensors.torch import load_file, save_file

    from recog.fileio import atomic_path

    if path.is_file():
        try:
            return load_file(str(path))["features"], True
        except Exception:  # noqa: BLE001 - a damaged cache file is computed again
            pass
    loader = make_loader(split, t.data.channels, t.data.image_size, 64, t.normalize, t.device,
                         workers=t.config.workers, channels_last=t.config.channels_last)
    out = []
    with eval_mode(net), autocast(t.device, t.config.precision):
        for batch in loader:
            x = batch[0]
            if view == "flip":
                x = flip(x, torch.ones(len(x), dtype=torch.bool, device=x.device))
            out.append(net(x).to(dtype).cpu())
    features = torch.cat(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"features": features.contiguous()}, str(tmp))
    return features, False


L2_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)  # the head's L2 strengths tried (on the mean loss)
FOLDS = 5
CV_IMAGES = 4000  # at most this many images choose the L2 strength (the head is then fitted on all)


def fit_probe(training: Training, hooks: Hooks | None = None) -> LoopState:
    """Fit the head on cached features of the frozen backbone: L2-regularised (the task's loss, e.g.
    softmax cross-entropy: logistic regression), full-batch L-BFGS on standardised features, its
    strength chosen by grouped k-fold cross-validation on the training features (an image and its
    mirror in the same fold), then fitted on all of them. The validation split only reports (and
    early-stops nothing): the final report on it is not a choice made on it. One row in metrics.csv;
    weights (whole model) and loop state as :func:`fit` writes them."""
    from recog.engine.fit import Hooks, _print_epoch, _save

    t, cfg, state, hooks = training, training.config, training.state, hooks or Hooks()
    if state.epoch >= 1:  # resumed after the head was fitted (state.pt holds it): only the report is owed
        return state
    show = cfg.verbose and is_main()
    parts = _parts(t)  # digests of the model as it is, head included in its layout
    trained_head = head(t.model)[1]
    with headless(t.model):  # the backbone alone gives the pooled features
        feats = feature_pass(t, t.model, parts)
    tick = time.perf_counter()
    train_x = train_features(feats)
    train_y, strength, cv = fit_linear(t, train_x, trained_head)
    with torch.no_grad():
        out = trained_head(train_x.to(trained_head.weight))
        hits, decisions = t.task.hits(out, train_y.to(out.device))
        train_loss = t.task.loss(out, train_y.to(out.device)).item()
    row: dict[str, Any] = {"epoch": 1, "train_loss": train_loss, "train_acc": float(hits) / max(1, decisions),
                           "val_loss": math.nan, "val_acc": math.nan, **{c: math.nan for c in t.task.columns},
                           "lr": strength}
    extra: dict[str, Any] = {}
    val = feats.get("val:plain")
    if val is not None:
        with torch.no_grad():
            metrics, extra = t.task.validate(trained_head(val.to(trained_head.weight)).float().cpu(),
                                             t.data.val.labels)
        row.update(metrics)
    row["train_seconds"] = row["seconds"] = time.perf_counter() - tick
    row["images_per_s"] = len(train_x) / max(row["seconds"], 1e-9)
    state.history.append(row)
    state.epoch, state.best_epoch = 1, 1
    state.best_score = row.get(t.task.score, math.nan)
    state.total_steps = state.steps_per_epoch = 1
    if is_main():
        _save(t, row, {**t.meta, **extra, "epoch": 1}, True, hooks)
        if show:
            _print_epoch(row, 1, val is not None, t.task.score)
    if hooks.on_epoch_end is not None:
        hooks.on_epoch_end(dict(row, model=t.model, score=state.best_score))
    return state


def fit_head_first(training: Training, hooks: Hooks | None = None) -> LoopState:
    """``transfer: full``: the head first (the probe's fit on the backbone's cached pooled features, in
    place of a random head whose first gradients would distort the pretrained features), then the whole
    network trains as any run (:func:`recog.engine.fit.fit`). A resumed run goes straight to the loop."""
    from recog.engine.fit import fit

    t = training
    plain = t.config.head == "linear" and not is_fusion(t.config.model)  # a fusion model's head sees text too
    if t.state.epoch == 0 and t.config.pretrained and plain and _head_first_fits(t):
        parts = _parts(t)
        layer = head(t.model)[1]
        with headless(t.model):
            feats = feature_pass(t, t.model, parts)
        fit_linear(t, train_features(feats), layer)
    return fit(t, hooks)


HEAD_FIRST_SHARE = 0.2  # of a time budget, at most, for the head-first feature pass of a full fine-tune


def _head_first_fits(t: Training) -> bool:
    """Without a budget, always; with one, when the feature pass (every training image and its mirror,
    the val images: one forward each, at the evaluation's measured speed) takes at most
    :data:`HEAD_FIRST_SHARE` of it. Otherwise the head starts as the architecture initialises it, and
    the plan says so."""
    if t.budget is None or t.budget.plan is None:
        return True
    images = len(t.data.train) * (2 if t.config.flip else 1) + len(t.data.val or ())
    seconds = images * t.budget.plan.timings.eval_image_s
    if seconds <= HEAD_FIRST_SHARE * t.budget.seconds:
        return True
    if t.config.verbose and is_main():
        print(f"note: the head is not fitted first: its feature pass over {images:,} images (~{seconds:.0f} s) would "
              f"take over {HEAD_FIRST_SHARE:.0%} of the time budget", file=sys.stderr)
    return False


def fit_linear(t: Training, train_x: torch.Tensor, layer: nn.Linear) -> tuple[torch.Tensor, float, float]:
    """Fit ``layer`` (the head) on the training features ``train_x`` (the training split's images, view
    after view): standardised, its L2 strength chosen by grouped cross-validation (an image and its
    mirror in one fold), fitted on all, folded back into one linear layer on the raw features.
    Returns (the features' targets, the strength, its cross-validated score)."""
    n = len(t.data.train)
    views = len(train_x) // n
    labels = t.data.train.labels
    train_y = labels.repeat(views, *([1] * (labels.ndim - 1)))
    group = torch.arange(n).repeat(views)  # an image and its mirror share a fold
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    z = (train_x - mean) / std
    strength, cv = _choose_strength(t, z, train_y, group, t.config.seed)
    weight, bias = _fit_head(t, z, train_y, strength)
    with torch.no_grad():  # back to raw features: one linear layer, as the model's head
        layer.weight.copy_((weight / std).to(layer.weight))
        layer.bias.copy_((bias - (weight * (mean / std)).sum(1)).to(layer.bias))
    if t.config.verbose and is_main():
        print(f"linear head: L2 {strength:g} chosen by {FOLDS}-fold cross-validation on the training features "
              f"({t.task.score} {cv:.4f}; tried {', '.join(f'{s:g}' for s in L2_GRID)})", file=sys.stderr)
    return train_y, strength, cv


def _fit_head(t: Training, x: torch.Tensor, y: torch.Tensor, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) minimising the task's mean loss + strength/2 * |weight|^2 (full-batch L-BFGS)."""
    classes = len(t.data.classes)
    weight = torch.zeros(classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=200, tolerance_grad=1e-6, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = t.task.loss(x @ weight.T + bias, y) + 0.5 * strength * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach(), bias.detach()


def _choose_strength(t: Training, x: torch.Tensor, y: torch.Tensor, group: torch.Tensor,
                     seed: int) -> tuple[float, float]:
    """(the L2 strength with the best mean validation score over grouped folds, that score)."""
    images = int(group.max()) + 1
    folds = min(FOLDS, images)
    if folds < 2:
        return L2_GRID[len(L2_GRID) // 2], math.nan
    generator = torch.Generator().manual_seed(seed)
    if images > CV_IMAGES:  # a large set: the strength is chosen on a sample of its images (and their mirrors)
        kept = torch.zeros(images, dtype=torch.bool)
        kept[torch.randperm(images, generator=generator)[:CV_IMAGES]] = True
        rows = kept[group]
        renumber = torch.cumsum(kept.long(), 0) - 1
        x, y, group, images = x[rows], y[rows], renumber[group[rows]], CV_IMAGES
    fold_of = torch.randperm(images, generator=generator) % folds
    scores = {}
    for strength in L2_GRID:
        total = 0.0
        for k in range(folds):
            held = fold_of[group] == k
            weight, bias = _fit_head(t, x[~held], y[~held], strength)
            metrics, _ = t.task.validate(x[held] @ weight.T + bias, y[held])
            total += metrics[t.task.score]
        scores[strength] = total / folds
    best = max(L2_GRID, key=lambda s: (scores[s], s))  # ties: the stronger regularisation
    return best, scores[best]
