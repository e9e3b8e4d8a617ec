"""Explanations (``recog.explain``; the module is not named ``explain``, which would shadow the
function): where in the image the model found its evidence, as maps people can look at.

A feature on top of inference: a :class:`~recog.inference.Classifier` and images in, one map per
image out (N×H×W at the model's input size), computed by Captum:

- ``gradcam``: Grad-CAM (Selvaraju et al., 2017) at the deepest convolution whose map is at least
  7×7 at the input size (the last convs of small-image nets give 1×1..4×4 maps: no "where" left);
- ``ig``: integrated gradients (Sundararajan et al., 2017) from the mean image (zero after
  normalisation), summed over channels; signed: positive pixels raise the class score;
- ``saliency``: the largest absolute input gradient over channels (Simonyan et al., 2014);
- ``occlusion``: the drop of the class score when a patch (1/8 of the side) is set to the mean,
  slid at half its size (Zeiler & Fergus, 2014); signed.

Every method explains the target class's score (its logit, as Grad-CAM's paper does) and runs in
fp32 with autocast off whatever precision the model was trained in: integrated gradients under bf16
differ ~30% from fp32 (the issue's measurement), and a map that depends on the precision is noise.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from recog.data.image import ImageReadError, image_files, read_files
from recog.errors import ConfigError, DataError, MissingExtra, did_you_mean, shown
from recog.fileio import atomic_path, atomic_write_text, check_folder, next_run_dir
from recog.inference import Classifier, check_outputs, load
from recog.runs import run_data
from recog.models import choose_cam_layer, conv_maps

METHODS = {
    "gradcam": "Grad-CAM at a convolution with a 7x7+ map (convolutional models)",
    "ig": "integrated gradients from the mean image",
    "saliency": "largest absolute input gradient",
    "occlusion": "score drop when a patch is set to the mean",
}
# The default is the method that passed both checks of benchmarks/explain_faithfulness.py on CIFAR-10:
# it beats random pixels on deletion and insertion, and its maps decorrelate from a randomised model's
# (README, "Explanations": Grad-CAM and occlusion lose to random pixels on deletion there).
DEFAULT_METHOD = "ig"
SIGNED = {"ig", "occlusion"}  # maps with negative evidence too
IG_STEPS = 32
MIN_MAP_SIDE = 7


def require_captum() -> Any:
    """captum.attr, or one line saying what to install."""
    try:
        import captum.attr
    except ImportError:
        raise MissingExtra("explanations need Captum", "explain") from None
    return captum.attr


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"unknown explanation method {method!r}{did_you_mean(method, METHODS)} "
                          f"(methods: {', '.join(METHODS)})")
    return method


@dataclass
class Explanation:
    """Maps and predictions for a batch of images; :meth:`save` draws them."""

    method: str
    maps: torch.Tensor  # fp32 (N, H, W) at the model's input size
    layer: str | None  # the layer Grad-CAM read (None for the pixel methods)
    map_size: tuple[int, int]  # the raw attribution's h×w before upsampling
    images: torch.Tensor  # uint8 (N, C, H, W): what the model saw
    targets: list[str]  # the class each map explains
    target_probs: list[float]  # the model's probability of that class
    predictions: list[dict[str, Any]]  # per image what ``recog predict`` says ({"top": …} or {"labels": …})
    paths: list[str] = field(default_factory=list)  # the files, when read from files
    errors: list[dict[str, Any]] = field(default_factory=list)  # unreadable files, as ``predict`` reports them
    files: list[Path] = field(default_factory=list)  # the figures written
    target_given: bool = False

    def __len__(self) -> int:
        return len(self.maps)

    def save(self, out: str | os.PathLike) -> list[Path]:
        """One PNG per image in ``out``: the image, the map and the overlay, titled with the prediction."""
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        names = _figure_names(self.paths or [f"image-{i}" for i in range(len(self))], self.method)
        plt = _pyplot()
        self.files = []
        for i, name in enumerate(names):
            fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
            image = _display(self.images[i])
            m = self.maps[i].numpy()
            axes[0].imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
            axes[0].set_title("image", fontsize=9)
            _heat(axes[1], m, self.method, image=None)
            axes[1].set_title(f"{self.method}" + (f" at {self.layer} ({self.map_size[0]}x{self.map_size[1]})"
                                                  if self.layer else ""), fontsize=9)
            _heat(axes[2], m, self.method, image=image)
            axes[2].set_title("overlay", fontsize=9)
            for ax in axes:
                ax.axis("off")
            fig.suptitle(self.title(i), fontsize=10)
            fig.tight_layout()
            with atomic_path(out_dir / name) as tmp:
                fig.savefig(tmp, format="png", dpi=100)
            plt.close(fig)
            self.files.append(out_dir / name)
        return self.files

    def title(self, i: int) -> str:
        top = _top(self.predictions[i])
        text = f"predicted: {top[0]} ({top[1]:.1%})" if top else "predicted: no label over its threshold"
        if self.target_given:
            text += f"  ·  target: {self.targets[i]} ({self.target_probs[i]:.1%})"
        return text


def explain(
    source: str | os.PathLike | Classifier,
    images: str | os.PathLike | Sequence[str | os.PathLike] | torch.Tensor,
    method: str = DEFAULT_METHOD,
    target: str | None = None,
    layer: str | None = None,
    out: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 32,
    top_k: int = 5,
) -> Explanation:
    """Explain a run's (or weights file's, or Classifier's) predictions on image files, folders or a
    uint8 tensor (N, C, H, W) at the model's size. ``target``: the class to explain (default: each
    image's predicted class). ``out``: a folder to save one figure per image in."""
    require_captum()
    check_method(method)
    clf = source if isinstance(source, Classifier) else load(source, device)
    if out is not None:
        check_folder(out, "--out")
    target_index = _target_index(clf, target)
    layer_name = _layer_for(clf, method, layer)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(images, torch.Tensor):
        readable, paths, errors = images, [], []
    else:
        readable, paths, errors = _read_files(clf, images)
    parts = [_explain_batch(clf, readable[s:s + batch_size], method, target_index, layer_name, top_k)
             for s in range(0, len(readable), batch_size)]
    if not parts:
        raise DataError("no image to explain: " + ("every file failed (see the warnings)" if errors else "none given"))
    result = Explanation(
        method=method, maps=torch.cat([p["maps"] for p in parts]), layer=layer_name, map_size=parts[0]["map_size"],
        images=readable.cpu(), targets=sum((p["targets"] for p in parts), []),
        target_probs=sum((p["target_probs"] for p in parts), []),
        predictions=sum((p["predictions"] for p in parts), []), paths=paths, errors=errors,
        target_given=target is not None)
    if out is not None:
        result.save(out)
    return result


def attribute(clf: Classifier, images_u8: torch.Tensor, targets: torch.Tensor, method: str,
              layer: str | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """(maps (N, H, W) fp32 on the CPU, raw map size) of ``method`` for class ``targets`` (N,)."""
    attr = require_captum()
    model = clf.model.eval()
    dev = clf.device
    x = clf.normalize(images_u8.to(dev)).float().contiguous()
    t = targets.to(dev)
    size = tuple(x.shape[-2:])
    with torch.autocast(dev.type, enabled=False), torch.enable_grad():
        if method == "gradcam":
            cam = attr.LayerGradCam(model, model.get_submodule(layer))
            raw = cam.attribute(x, target=t, relu_attributions=True).float()
            raw_size = tuple(raw.shape[-2:])
            maps = F.interpolate(raw, size=size, mode="bilinear", align_corners=False)[:, 0]
            return maps.detach().cpu(), raw_size
        if method == "ig":
            a = attr.IntegratedGradients(model).attribute(
                x, baselines=0.0, target=t, n_steps=IG_STEPS, internal_batch_size=max(IG_STEPS, min(512, len(x) * 8)))
            maps = a.sum(1)
        elif method == "saliency":
            maps = attr.Saliency(model).attribute(x.requires_grad_(), target=t, abs=True).amax(1)
        elif method == "occlusion":
            c, side = x.shape[1], max(size)
            window = max(2, side // 8)
            stride = max(1, window // 2)
            a = attr.Occlusion(model).attribute(x, target=t, sliding_window_shapes=(c, window, window),
                                                strides=(c, stride, stride), baselines=0.0,
                                                perturbations_per_eval=max(1, 256 // len(x)))
            maps = a.mean(1)
        else:
            raise ConfigError(f"unknown explanation method {method!r}")
    return maps.detach().float().cpu(), size


def _explain_batch(clf: Classifier, images_u8: torch.Tensor, method: str, target_index: int | None,
                   layer: str | None, top_k: int) -> dict[str, Any]:
    with torch.no_grad(), torch.autocast(clf.device.type, enabled=False):
        clf.eval()
        logits = clf(images_u8.to(clf.device)).float()
    check_outputs(logits, clf.source)
    probs = clf.task.probabilities(logits).cpu()
    targets = probs.argmax(1) if target_index is None else torch.full((len(probs),), target_index)
    maps, map_size = attribute(clf, images_u8, targets, method, layer)
    return {"maps": maps, "map_size": map_size, "targets": [clf.classes[int(i)] for i in targets],
            "target_probs": [float(probs[i, int(t)]) for i, t in enumerate(targets)],
            "predictions": clf.task.predict(logits.cpu(), clf.classes, top_k)}


def _target_index(clf: Classifier, target: str | None) -> int | None:
    if target is None:
        return None
    if target not in clf.classes:
        shown_classes = ", ".join(clf.classes[:30]) + (" …" if len(clf.classes) > 30 else "")
        raise ConfigError(f"--target {target!r} is not one of the model's classes{did_you_mean(target, clf.classes)} "
                          f"(classes: {shown_classes})")
    return clf.classes.index(target)


def gradcam_layers(clf: Classifier) -> list[tuple[str, tuple[int, int]]]:
    """Grad-CAM's candidate layers (the convolutions, in the order they run) and their map sizes."""
    return conv_maps(clf.model, clf.meta["channels"], clf.meta["image_size"])


def _layer_for(clf: Classifier, method: str, layer: str | None) -> str | None:
    """The layer Grad-CAM reads: ``layer`` checked, or the default rule; None for the pixel methods."""
    if method != "gradcam":
        if layer is not None:
            raise ConfigError(f"--layer is for Grad-CAM (add --method gradcam); {method} attributes the input pixels")
        return None
    candidates = gradcam_layers(clf)
    if layer is None:
        if not candidates:
            raise ConfigError(f"Grad-CAM needs a convolutional layer with a spatial map; {clf.meta['model']} has none "
                              f"(a vision transformer's patch embedding is not one): use --method "
                              f"{', '.join(m for m in METHODS if m != 'gradcam')}")
        return choose_cam_layer(candidates, MIN_MAP_SIDE)[0]
    names = [n for n, _ in clf.model.named_modules() if n]
    if layer not in names:
        raise ConfigError(f"the model has no layer {layer!r}{did_you_mean(layer, names)} "
                          f"(list them with: recog explain --layers RUN)")
    if not _spatial(clf, layer):
        raise ConfigError(f"layer {layer!r} has no spatial (N, C, H, W) output for Grad-CAM to read")
    return layer


def _spatial(clf: Classifier, layer: str) -> bool:
    shapes: list[torch.Size] = []
    module = clf.model.get_submodule(layer)
    hook = module.register_forward_hook(lambda _m, _i, o: shapes.append(getattr(o, "shape", ())))
    try:
        with torch.no_grad():
            clf(torch.zeros(1, clf.meta["channels"], clf.meta["image_size"], clf.meta["image_size"],
                            dtype=torch.uint8, device=clf.device))
    finally:
        hook.remove()
    return bool(shapes) and len(shapes[0]) == 4


def _read_files(clf: Classifier, images: Any) -> tuple[torch.Tensor, list[str], list[dict[str, Any]]]:
    """(uint8 images, their paths, unreadable files as ``predict`` reports them)."""
    paths = image_files([images] if isinstance(images, (str, os.PathLike)) else images)
    arrays, good, errors = read_files(paths, clf.read)
    c, s = clf.meta["channels"], clf.meta["image_size"]
    return (torch.stack(arrays) if arrays else torch.zeros(0, c, s, s, dtype=torch.uint8)), good, errors


# ---- the run's most confident mistakes ------------------------------------------------------------

def explain_mistakes(
    run: str | os.PathLike,
    count: int = 16,
    method: str = DEFAULT_METHOD,
    layer: str | None = None,
    out: str | os.PathLike | None = None,
    device: str = "auto",
) -> tuple[Explanation, Path]:
    """The ``count`` most confident mistakes of a run's ``predictions.csv``, explained (the map of the
    predicted class) in one grid PNG; written into the run folder (default) and linked from its
    ``report.md``. Returns the explanation and the grid's path."""
    require_captum()
    check_method(method)
    if count < 1:
        raise ConfigError(f"--misclassified takes a number of images of at least 1, got {count}")
    run_dir = Path(run).expanduser()
    csv_path = run_dir / "predictions.csv"
    if not csv_path.is_file():
        raise DataError(f"no predictions.csv in {run_dir}: --misclassified needs a run folder with its final "
                        f"evaluation (a run without a test or val split has none)")
    clf = load(run_dir, device)
    mistakes = _mistakes(csv_path, count)
    if not mistakes:
        raise DataError(f"{csv_path} has no misclassified image: nothing to explain")
    images = _images_of(clf, run_dir, [m["image"] for m in mistakes])
    result = explain(clf, images, method=method, layer=layer)
    result.paths = [m["image"] for m in mistakes]
    out_dir = Path(out).expanduser() if out is not None else run_dir
    if out is not None:
        check_folder(out, "--out")
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = out_dir / f"misclassified-{method}.png"
    _save_grid(grid, result, mistakes)
    if out_dir.resolve() == run_dir.resolve():
        _link_in_report(run_dir, grid.name, f"Most confident mistakes ({method})")
    return result, grid


def _mistakes(csv_path: Path, count: int) -> list[dict[str, Any]]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"image", "true", "predicted", "probability"} <= set(rows[0]):
        raise DataError(f"{csv_path} is not a recog predictions.csv (columns image, true, predicted, probability)")
    wrong = []
    for line, r in enumerate(rows, start=2):  # line 1 is the header
        if r["true"] == r["predicted"]:
            continue
        try:
            wrong.append(dict(r, probability=float(r["probability"])))
        except (TypeError, ValueError):
            raise DataError(f"{csv_path}, line {line}: probability {r['probability']!r} is not a number") from None
    return sorted(wrong, key=lambda r: -r["probability"])[:count]


def _images_of(clf: Classifier, run_dir: Path, names: list[str]) -> torch.Tensor:
    """The images ``predictions.csv`` names: files, or indices into the run's evaluation split."""
    if all(not n.isdigit() for n in names):
        try:
            return torch.stack([clf.read(n) for n in names])
        except ImageReadError as exc:
            raise DataError(f"an image of {run_dir / 'predictions.csv'} cannot be read any more: {exc}") from None
    if clf.config is None:
        raise DataError(f"{run_dir} has no config.yaml: cannot find the images its predictions.csv numbers")
    ds = run_data(clf.config, clf.meta["image_size"], clf.meta["channels"], clf.device)
    report = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").is_file() else {}
    split_name, split = ds.eval_split or (None, None)
    if split is None or report.get("split", split_name) != split_name or not hasattr(split, "images"):
        raise DataError(f"cannot find the {report.get('split', 'evaluation')} split of {clf.config.data} that "
                        f"{run_dir / 'predictions.csv'} numbers")
    return split.images[torch.tensor([int(n) for n in names])].cpu()


def _link_in_report(run_dir: Path, name: str, title: str) -> None:
    """List a figure in the run's report.json and rewrite report.md from it, so that it links it."""
    from recog.tasks import report_markdown

    path = run_dir / "report.json"
    if not path.is_file():
        return
    report = json.loads(path.read_text())
    figures = [f for f in report.get("figures", []) if f["path"] != name] + [{"title": title, "path": name}]
    report["figures"] = figures
    atomic_write_text(path, json.dumps(report, indent=2))
    atomic_write_text(run_dir / "report.md", report_markdown(report))


# ---- drawing ------------------------------------------------------------------------------------

def _pyplot() -> Any:
    from recog.report import _pyplot as pyplot

    return pyplot()


def _display(image_u8: torch.Tensor) -> Any:
    """(H, W, 3) or (H, W) numpy for imshow."""
    a = image_u8.permute(1, 2, 0).numpy()
    return a[:, :, 0] if a.shape[2] == 1 else a


def _heat(ax: Any, m: Any, method: str, image: Any | None) -> None:
    """The map on its own (signed maps: blue against, red for) or over the image (its positive part)."""
    import numpy as np

    if image is None:
        if method in SIGNED:
            bound = float(np.abs(m).max()) or 1.0
            ax.imshow(m, cmap="RdBu_r", vmin=-bound, vmax=bound)
        else:
            ax.imshow(m, cmap="inferno", vmin=0, vmax=float(m.max()) or 1.0)
        return
    ax.imshow(overlay(image, m), interpolation="nearest")


def overlay(image: Any, m: Any) -> Any:
    """The map's positive part in colour over the image: (H, W, 3) uint8 from the image as numpy
    ((H, W) grey or (H, W, 3) uint8) and its map (H, W), scaled to its 99th percentile; opaque where
    the evidence is, the image itself elsewhere."""
    import matplotlib
    import numpy as np

    pos = np.clip(np.asarray(m, dtype=np.float32), 0, None)
    top = float(np.percentile(pos, 99)) or float(pos.max()) or 1.0  # as Captum draws: a few outlier
    pos = np.minimum(pos / top, 1.0)  # pixels must not wash the rest of the map out
    heat = matplotlib.colormaps["jet"](pos)[..., :3]
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    alpha = (0.7 * pos)[..., None]
    return np.round(rgb * (1 - alpha) + heat * 255 * alpha).astype(np.uint8)


def overlay_png(result: Explanation, i: int = 0, min_side: int = 224) -> bytes:
    """Image ``i``'s overlay as PNG bytes, enlarged (nearest neighbour) to at least ``min_side`` pixels."""
    import io

    from PIL import Image

    picture = Image.fromarray(overlay(_display(result.images[i]), result.maps[i].numpy()))
    scale = max(1, -(-min_side // min(picture.size)))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def _top(prediction: dict[str, Any]) -> tuple[str, float] | None:
    entries = prediction.get("top") or prediction.get("labels") or []
    best = max(entries, key=lambda e: e["prob"], default=None)
    return (best["class"], best["prob"]) if best else None


def _figure_names(paths: list[str], method: str) -> list[str]:
    """``<stem>-<method>.png`` per image, numbered where two files share a stem; never a path."""
    stems = [Path(p).stem or "image" for p in paths]
    names = []
    for i, stem in enumerate(stems):
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:80]
        names.append(f"{safe}-{method}.png" if stems.count(stem) == 1 else f"{safe}-{i}-{method}.png")
    return names


def _save_grid(path: Path, result: Explanation, mistakes: list[dict[str, Any]]) -> None:
    """Each mistake as two panels (image, overlay) titled true / predicted (probability)."""
    plt = _pyplot()
    n = len(result)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2.2 * 2 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, m in enumerate(mistakes):
        r, c = divmod(i, cols)
        image = _display(result.images[i])
        axes[r, 2 * c].imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
        axes[r, 2 * c].set_title(f"true: {m['true']}", fontsize=8)
        _heat(axes[r, 2 * c + 1], result.maps[i].numpy(), result.method, image)
        axes[r, 2 * c + 1].set_title(f"pred: {m['predicted']} ({m['probability']:.0%})", fontsize=8)
    fig.suptitle(f"most confident mistakes, {result.method}" + (f" at {result.layer}" if result.layer else ""),
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def default_out(clf: Classifier) -> Path:
    """``runs/explain`` (numbered), under the run's project when known."""
    return next_run_dir(clf.config.project if clf.config else "runs", "explain")


def warn_unreadable(errors: list[dict[str, Any]]) -> None:
    for e in errors:
        print(f"warning: skipped {shown(e['path'])}: {e['error']}", file=sys.stderr)
