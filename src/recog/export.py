"""Export: a run or weights file as one ONNX (or ``torch.export``) file that takes uint8 images
(N, H, W, C) at the model's size and returns probabilities. The conversion to float and the
normalisation are inside the graph (the weights' own ``Normalize``), so no caller can get the
preprocessing wrong; the classes, input size, channels, task (and multi-label thresholds) travel
as metadata, so the file alone is enough to predict (:mod:`recog.onnx_predict`, without torch).

Every export checks itself: real images through PyTorch (fp32) and ONNX Runtime at batch 1 and at
an odd batch; the largest absolute probability difference must be at most ``TOLERANCE``, else
nothing is written.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recog import __version__
from recog.errors import ConfigError, RecogError, did_you_mean
from recog.fileio import atomic_path
from recog.inference import Classifier, load

FORMATS = ("onnx", "pt2")
TOLERANCE = 1e-4  # largest |p_torch - p_onnx| an fp32 export may show
CHECK_BATCHES = (1, 17)
META_KEY = "recog"  # the ONNX metadata entry holding recog's JSON metadata


class ExportError(RecogError):
    """The exported graph does not agree with the model (or an exporter is missing)."""


class Exported(nn.Module):
    """uint8 (N, H, W, C) -> probabilities: channels-last in, the Classifier (Normalize + model), the
    task's probabilities (softmax, or one sigmoid per label)."""

    def __init__(self, clf: Classifier) -> None:
        super().__init__()
        self.clf = clf
        self.multilabel = clf.meta.get("task") == "multilabel"

    def forward(self, images_nhwc: torch.Tensor) -> torch.Tensor:
        logits = self.clf(images_nhwc.permute(0, 3, 1, 2)).float()
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)


def metadata(clf: Classifier) -> dict[str, Any]:
    """What a predictor needs from the file alone."""
    m = clf.meta
    return {"recog_version": __version__, "model": m["model"], "classes": list(m["classes"]),
            "image_size": m["image_size"], "channels": m["channels"], "task": m.get("task", "classification"),
            "thresholds": m.get("thresholds"), "input": "uint8 NHWC, resized to image_size (the caller resizes)",
            "output": "probabilities"}


def export(source: str | os.PathLike | Classifier, format: str = "onnx", output: str | os.PathLike | None = None,
           images: torch.Tensor | None = None, verbose: bool = True) -> Path:
    """Export a run, weights file or Classifier; returns the file written (default: the run folder's
    ``weights/model.onnx`` or beside the weights file). ``images``: uint8 (N, C, H, W) to check with
    (default: the run's own evaluation images, else random ones)."""
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}{did_you_mean(format, FORMATS)} (formats: "
                          f"{', '.join(FORMATS)})")
    clf = source if isinstance(source, Classifier) else load(source, "cpu")
    clf = clf.cpu().float().eval()
    clf.model.to(memory_format=torch.contiguous_format)
    path = Path(output) if output else _default_output(clf, format)
    if path.exists() and path.is_dir():
        raise ConfigError(f"--output {path} is a folder; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = Exported(clf).eval()
    check = _check_images(clf, images)
    size, channels = clf.meta["image_size"], clf.meta["channels"]
    example = torch.zeros(2, size, size, channels, dtype=torch.uint8)
    with atomic_path(path) as tmp:
        if format == "onnx":
            _export_onnx(wrapper, example, Path(tmp), metadata(clf))
            worst = _verify_onnx(wrapper, Path(tmp), check)
        else:
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.export.export(wrapper, (example,), dynamic_shapes=({0: batch},))
            torch.export.save(program, str(tmp), extra_files={"recog.json": json.dumps(metadata(clf))})
            worst = _verify_pt2(wrapper, Path(tmp), check)
        if worst > TOLERANCE:
            raise ExportError(f"the exported {format} graph disagrees with the model: largest probability "
                              f"difference {worst:.2e} > {TOLERANCE:.0e}; nothing was written")
    if verbose:
        print(f"exported {clf.meta['model']} to {path} ({format}, uint8 NHWC {size}x{size}x{channels} in, "
              f"probabilities out); checked on {len(check)} images at batch {' and '.join(map(str, CHECK_BATCHES))}: "
              f"largest probability difference {worst:.2e}", file=sys.stderr)
    return path


def _default_output(clf: Classifier, format: str) -> Path:
    src = clf.source or Path("model.safetensors")
    return src.with_name(f"model.{format}")


def _check_images(clf: Classifier, images: torch.Tensor | None) -> torch.Tensor:
    """Real images when the run's data can be read, random ones otherwise; max(CHECK_BATCHES) of them."""
    n = max(CHECK_BATCHES)
    if images is None and clf.config is not None:
        try:
            from recog.engine.build import run_data

            ds = run_data(clf.config, clf.meta["image_size"], clf.meta["channels"], "cpu")
            split = (ds.eval_split or ("train", ds.train))[1]
            if hasattr(split, "images"):
                images = split.images[:n]
            else:
                images = torch.stack([clf.read(p) for p in split.paths[:n]])
        except (RecogError, OSError) as exc:
            print(f"note: the run's images cannot be read ({exc}); checking the export on random images",
                  file=sys.stderr)
    if images is None:
        g = torch.Generator().manual_seed(0)
        s, c = clf.meta["image_size"], clf.meta["channels"]
        images = torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8, generator=g)
    if len(images) < n:
        images = images.repeat((n + len(images) - 1) // len(images), 1, 1, 1)[:n]
    return images.cpu()


def _export_onnx(wrapper: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, Any]) -> None:
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'recog[export]'") from None
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(wrapper, (example,), dynamo=True, dynamic_shapes=({0: batch},),
                                input_names=["images"], output_names=["probabilities"], verbose=False)
    program.save(str(path))
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    model.doc_string = f"recog {meta['model']}: uint8 images (N, H, W, C) -> probabilities over {len(meta['classes'])} classes"
    onnx.save(model, str(path))


def _reference(wrapper: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        return wrapper(images.permute(0, 2, 3, 1).contiguous())


def _verify_onnx(wrapper: nn.Module, path: Path, images: torch.Tensor) -> float:
    from recog.onnx_predict import session

    sess = session(path)
    worst = 0.0
    for b in CHECK_BATCHES:
        x = images[:b]
        got = sess.run(None, {sess.get_inputs()[0].name: x.permute(0, 2, 3, 1).contiguous().numpy()})[0]
        worst = max(worst, float((torch.from_numpy(got) - _reference(wrapper, x)).abs().max()))
    return worst


def _verify_pt2(wrapper: nn.Module, path: Path, images: torch.Tensor) -> float:
    program = torch.export.load(str(path))
    worst = 0.0
    for b in CHECK_BATCHES:
        x = images[:b].permute(0, 2, 3, 1).contiguous()
        with torch.no_grad():
            got = program.module()(x)
        worst = max(worst, float((got - _reference(wrapper, images[:b])).abs().max()))
    return worst
