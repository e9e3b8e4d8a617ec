"""Predict with an ONNX file exported by recog, with numpy, Pillow and ONNX Runtime only: this
module never imports torch (a test runs it where importing torch fails). The file carries its
classes, input size, channels and task; images are decoded exactly as in training
(:func:`recog.data.image.load_image`) and the graph does the rest (float, normalisation, model,
probabilities)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recog.data.image import answer_files, image_files, load_image
from recog.errors import ConfigError, MissingExtra, WeightsError
from recog.fileio import META_KEY
from recog.runs import check_meta


def session(path: str | os.PathLike, spinning: bool = True, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session, or one line saying what to install. ``spinning=False``: its
    threads sleep between calls instead of spinning (a server, where other threads need the cores).
    ``threads``: its intra-op threads (default: the cores this process may use, a cgroup quota
    included, where ONNX Runtime would take every core of the host)."""
    from recog.cores import usable_cores

    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingExtra("ONNX models need onnxruntime", "export") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initialisers are not the user's business
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = threads or usable_cores()
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise WeightsError(f"{path} is not a readable ONNX model ({str(exc).splitlines()[0][:200]})") from None


class OnnxClassifier:
    """An exported recog model: ``predict_arrays`` on uint8 (N, C, H, W) images at its size."""

    def __init__(self, path: str | os.PathLike, spinning: bool = True, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise WeightsError(f"no ONNX file at {self.path}")
        self.session = session(self.path, spinning, threads)
        props = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise WeightsError(f"{self.path} was not exported by recog: no classes or preprocessing in its metadata")
        try:
            meta = json.loads(props[META_KEY])
        except ValueError:
            raise WeightsError(f"{self.path}: its recog metadata is not valid JSON") from None
        self.meta: dict[str, Any] = check_meta(meta, self.path, normalisation=False)  # Normalize is in the graph
        self.classes: list[str] = list(self.meta["classes"])
        self.input = self.session.get_inputs()[0].name
        # the rule that reads an answer from the probabilities (files before it was recorded: thresholds
        # were recorded for multi-label models only)
        self.decision = self.meta.get("decision") or ("thresholds" if self.meta.get("thresholds") else "top-k")

    def read(self, source: str | os.PathLike | bytes) -> np.ndarray:
        return load_image(source, self.meta["channels"], self.meta["image_size"])

    def probabilities(self, images_u8: np.ndarray) -> np.ndarray:
        nhwc = np.ascontiguousarray(images_u8.transpose(0, 2, 3, 1))
        probs = self.session.run(None, {self.input: nhwc})[0]
        if not np.isfinite(probs).all():
            raise WeightsError(f"{self.path} gives non-finite outputs (NaN or inf): the model is broken")
        return probs

    def predict_arrays(self, images_u8: np.ndarray, top_k: int = 5) -> list[dict[str, Any]]:
        """As :meth:`recog.inference.Classifier.predict_images`: top-k, or the labels over their thresholds."""
        probs = self.probabilities(images_u8)
        if self.decision == "thresholds":
            cuts = np.asarray(self.meta.get("thresholds") or [0.5] * len(self.classes))
            return [{"labels": sorted(({"class": self.classes[i], "prob": float(p[i])}
                                       for i in np.flatnonzero(p >= cuts)), key=lambda e: -e["prob"])}
                    for p in probs]
        k = min(top_k, probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [{"top": [{"class": self.classes[i], "prob": float(p[i])} for i in row]} for p, row in zip(probs, order)]


def predict(path: str | os.PathLike, images: str | os.PathLike | Sequence[str | os.PathLike], top_k: int = 5,
            batch_size: int = 64) -> list[dict[str, Any]]:
    """``recog predict model.onnx …``: the same entries as :func:`recog.predict`."""
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    clf = OnnxClassifier(path)
    paths = image_files([images] if isinstance(images, (str, os.PathLike)) else images)
    return answer_files(paths, clf.read, lambda xs: clf.predict_arrays(np.stack(xs), top_k), batch_size)
