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
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recog._version import __version__
from recog.errors import ConfigError, MissingExtra, RecogError, did_you_mean
from recog.fileio import META_KEY, atomic_path
from recog.inference import Classifier, load
from recog.runs import run_data

FORMATS = ("onnx", "pt2")
TOLERANCE = 1e-4  # largest |p_torch - p_onnx| an fp32 export may show
CHECK_BATCHES = (1, 17)


class ExportError(RecogError):
    """The exported graph does not agree with the model (or an exporter is missing)."""


class Exported(nn.Module):
    """uint8 (N, H, W, C) -> probabilities: channels-last in, the Classifier (Normalize + model), the
    task's probabilities (softmax, or one sigmoid per label)."""

    def __init__(self, clf: Classifier) -> None:
        super().__init__()
        self.clf = clf

    def forward(self, images_nhwc: torch.Tensor) -> torch.Tensor:
        return self.clf.task.probabilities(self.clf(images_nhwc.permute(0, 3, 1, 2)))


def metadata(clf: Classifier) -> dict[str, Any]:
    """What a predictor needs from the file alone."""
    m = clf.meta
    return {"recog_version": __version__, "model": m["model"], "classes": list(m["classes"]),
            "image_size": m["image_size"], "channels": m["channels"], "task": clf.task.name,
            "decision": clf.task.decision, "thresholds": m.get("thresholds"), "input": "uint8 NHWC, resized to image_size (the caller resizes)",
            "output": "probabilities"}


def export(source: str | os.PathLike | Classifier, format: str = "onnx", output: str | os.PathLike | None = None,
           images: torch.Tensor | None = None, int8: bool = False, verbose: bool = True) -> Path:
    """Export a run, weights file or Classifier; returns the file written (default: the run folder's
    ``weights/model.onnx`` or beside the weights file). ``images``: uint8 (N, C, H, W) to check with
    (default: the run's own evaluation images, else random ones). ``int8``: also a statically
    quantised ``<name>.int8.onnx`` (see :func:`quantize`), whose path is then returned."""
    if int8 and format != "onnx":
        raise ConfigError("--int8 is an ONNX Runtime quantisation: use it with --format onnx")
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}{did_you_mean(format, FORMATS)} (formats: "
                          f"{', '.join(FORMATS)})")
    clf = source if isinstance(source, Classifier) else load(source, "cpu")
    if clf.takes_text:
        raise ExportError(f"{clf.source}: image + text (fusion) models are not exported yet: their texts need the "
                          f"text encoder, which the exported file would not hold; serve the run folder instead "
                          f"(recog serve RUN takes a text field)")
    if int8 and clf.config is None:  # said before anything is written
        raise ConfigError("--int8 needs the run's data (calibration and the accuracy check): export a run folder, "
                          "not a bare weights file; nothing was written")
    clf = clf.cpu().float().eval()
    clf.model.to(memory_format=torch.contiguous_format)
    path = Path(output) if output else _default_output(clf, format)
    if path.exists() and path.is_dir():
        raise ConfigError(f"--output {path} is a folder; give a file name")
    if path.exists() and not _made_by_recog(path):
        raise ConfigError(f"--output {path} exists and is not a model recog exported: not overwriting it "
                          f"(remove it or choose another name)")
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = Exported(clf).eval()
    ds = _own_data(clf, int8) if images is None or int8 else None  # read once: the check and int8 share it
    if int8 and ds is None:
        raise ConfigError("--int8 needs the run's images (see the note above); nothing was written")
    check = _check_images(clf, images, ds)
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
    return quantize(clf, path, verbose=verbose, ds=ds) if int8 else path


def _made_by_recog(path: Path) -> bool:
    """An earlier export (ONNX with recog's metadata, or a torch.export archive with recog.json)."""
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("recog.json") for n in z.namelist())
    try:
        import onnx

        return any(p.key == META_KEY for p in onnx.load(str(path), load_external_data=False).metadata_props)
    except Exception:  # noqa: BLE001 - not an ONNX file at all
        return False


def _default_output(clf: Classifier, format: str) -> Path:
    src = clf.source or Path("model.safetensors")
    return src.with_name(f"model.{format}")


def _own_data(clf: Classifier, int8: bool) -> Any:
    """The run's own data, split as trained; None for a bare weights file or (with a note) when it
    cannot be read any more."""
    if clf.config is None:
        return None
    try:  # streamed (a folder is scanned, not decoded): the check reads its 17 images itself
        return run_data(clf.config, clf.meta["image_size"], clf.meta["channels"], "cpu", stream=not int8)
    except (RecogError, OSError) as exc:
        print(f"note: the run's images cannot be read ({exc}); checking the export on random images",
              file=sys.stderr)
        return None


def _check_images(clf: Classifier, images: torch.Tensor | None, ds: Any) -> torch.Tensor:
    """``images``, else the run's evaluation (or training) images, else random ones; max(CHECK_BATCHES)."""
    n = max(CHECK_BATCHES)
    if images is None and ds is not None:
        images = _split_images((ds.eval_split or ("train", ds.train))[1], n, clf.read)
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
        raise MissingExtra("ONNX export needs onnx, onnxscript and onnxruntime", "export") from None
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(wrapper, (example,), dynamo=True, dynamic_shapes=({0: batch},),
                                input_names=["images"], output_names=["probabilities"], verbose=False)
    program.save(str(path))
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    model.doc_string = (f"recog {meta['model']}: uint8 images (N, H, W, C) -> probabilities over "
                        f"{len(meta['classes'])} classes")
    onnx.save(model, str(path))


def _reference(wrapper: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        probs = wrapper(images.permute(0, 2, 3, 1).contiguous())
    if not torch.isfinite(probs).all():  # else the difference is NaN and max(0.0, nan) passes as 0.0
        raise ExportError(f"the model in {wrapper.clf.source or 'memory'} gives non-finite outputs (NaN or inf): its "
                          f"weights are broken; nothing was written")
    return probs


def _verify_onnx(wrapper: nn.Module, path: Path, images: torch.Tensor) -> float:
    from recog.onnx_predict import session

    sess = session(path)
    worst = 0.0
    for b in CHECK_BATCHES:
        x = images[:b]
        got = sess.run(None, {sess.get_inputs()[0].name: x.permute(0, 2, 3, 1).contiguous().numpy()})[0]
        diff = float((torch.from_numpy(got) - _reference(wrapper, x)).abs().max())
        worst = max(worst, diff if math.isfinite(diff) else math.inf)
    return worst


def _verify_pt2(wrapper: nn.Module, path: Path, images: torch.Tensor) -> float:
    program = torch.export.load(str(path))
    worst = 0.0
    for b in CHECK_BATCHES:
        x = images[:b].permute(0, 2, 3, 1).contiguous()
        with torch.no_grad():
            got = program.module()(x)
        diff = float((got - _reference(wrapper, images[:b])).abs().max())
        worst = max(worst, diff if math.isfinite(diff) else math.inf)
    return worst


# ---- int8 -------------------------------------------------------------------------------------------

CALIBRATION_IMAGES = 256
MAX_INT8_LOSS = 0.01  # accuracy points (as a fraction) int8 may lose against fp32 before it is refused


def _split_images(split: Any, n: int | None, read: Any) -> torch.Tensor:
    if hasattr(split, "images"):
        return split.images[:n]
    return torch.stack([read(p) for p in split.paths[:n]])


def quantize(clf: Classifier, fp32_path: Path, output: Path | None = None, verbose: bool = True,
             ds: Any = None) -> Path:
    """Static int8 quantisation with ONNX Runtime (QDQ, per-channel weights, MinMax calibration on
    ``CALIBRATION_IMAGES`` of the run's training images). Measures fp32 and int8 accuracy on the run's
    evaluation split and images/s at batch 64, side by side; refuses (raises, writes nothing) when
    int8 loses more than one accuracy point. ``ds``: the run's data when already read."""
    from onnxruntime.quantization import CalibrationDataReader

    if clf.config is None:
        raise ConfigError("--int8 needs the run's data (calibration and the accuracy check): export a run folder")
    ds = ds or run_data(clf.config, clf.meta["image_size"], clf.meta["channels"], "cpu")
    if ds.eval_split is None:
        raise ConfigError(f"--int8 needs a test or val split of {clf.config.data} to check the int8 accuracy on")
    calib = _split_images(ds.train, CALIBRATION_IMAGES, clf.read)
    split_name, split = ds.eval_split
    eval_images, labels = _split_images(split, None, clf.read), split.labels
    output = output or fp32_path.with_name(fp32_path.stem + ".int8.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([calib[i:i + 32].permute(0, 2, 3, 1).contiguous().numpy()
                                 for i in range(0, len(calib), 32)])

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    import logging

    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # the quantiser warns on the root logger about every norm layer
    try:
        figures = _quantize(fp32_path, output, Reader, split_name, eval_images, labels)
    finally:
        root.setLevel(level)
    if verbose:
        print(f"int8 model: {output}: {figures}", file=sys.stderr)
    return output


def _quantize(fp32_path: Path, output: Path, reader: Any, split_name: str, eval_images: torch.Tensor,
              labels: torch.Tensor) -> str:
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    from recog.onnx_predict import session

    with atomic_path(output) as tmp:
        prepared = Path(tmp).with_name(Path(tmp).name + ".pre.onnx")
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            # The first conv stays fp32 (it reads the image; the whitening stem lost 46 points of 80 in
            # int8, 0 when kept: benchmarks/README), and so do batch norms after pools (not foldable).
            import onnx

            first = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"][:1]
            quantize_static(str(prepared), str(tmp), reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["Conv", "MatMul", "Gemm"], nodes_to_exclude=first)
        finally:
            prepared.unlink(missing_ok=True)
        _copy_metadata(fp32_path, Path(tmp))
        fp32, int8 = session(fp32_path), session(tmp)
        acc32, acc8 = _accuracy(fp32, eval_images, labels), _accuracy(int8, eval_images, labels)
        speed32, speed8 = _images_per_second(fp32, eval_images), _images_per_second(int8, eval_images)
        figures = (f"{split_name} accuracy fp32 {acc32:.4f}, int8 {acc8:.4f} ({len(labels)} images, no TTA); batch 64: "
                   f"fp32 {speed32:.0f} images/s, int8 {speed8:.0f} images/s ({speed8 / speed32:.2f}x)")
        if acc32 - acc8 > MAX_INT8_LOSS:
            raise ExportError(f"int8 loses more than {100 * MAX_INT8_LOSS:.0f} point: {figures}; the int8 file was "
                              f"not written (the fp32 one is at {fp32_path})")
    return figures


def _copy_metadata(src: Path, dst: Path) -> None:
    """The fp32 file's metadata into the int8 one, which says it is int8 (``"precision"``)."""
    import onnx

    model = onnx.load(str(dst))
    del model.metadata_props[:]
    for prop in onnx.load(str(src), load_external_data=False).metadata_props:
        value = prop.value
        if prop.key == META_KEY:
            value = json.dumps({**json.loads(value), "precision": "int8"})
        model.metadata_props.add(key=prop.key, value=value)
    onnx.save(model, str(dst))


def _accuracy(sess: Any, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (multi-label: the share of label decisions at 0.5 that are right)."""
    nhwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    probs = torch.cat([torch.from_numpy(sess.run(None, {"images": nhwc[i:i + 256]})[0])
                       for i in range(0, len(images), 256)])
    if labels.ndim == 2:
        return float(((probs >= 0.5) == (labels > 0.5)).float().mean())
    return float((probs.argmax(1) == labels).float().mean())


def _images_per_second(sess: Any, images: torch.Tensor, batch: int = 64, rounds: int = 5) -> float:
    import time

    x = images[:batch].permute(0, 2, 3, 1).contiguous().numpy()
    if len(x) < batch:
        x = np.resize(x, (batch, *x.shape[1:]))
    sess.run(None, {"images": x})  # warm-up
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        sess.run(None, {"images": x})
        best = min(best, time.perf_counter() - started)
    return batch / best

