"""Weights as safetensors with recog's metadata.

A weights file carries what prediction needs (model name and arguments, task, classes, channels,
size, mean/std, thresholds) in the safetensors metadata, so nothing else is ever asked of the user.
Files are written to a temporary name and renamed. Nothing here unpickles: non-safetensors files
load only through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recog.errors import WeightsError
from recog.fileio import META_KEY, atomic_path


def save_weights(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    # clone: safetensors refuses tensors that share storage (tied weights, views)
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    from safetensors import SafetensorError

    with atomic_path(path) as tmp:
        try:
            save_file(state, str(tmp), metadata={META_KEY: json.dumps(meta)})
        except SafetensorError as exc:  # e.g. "No space left on device": one line, as any failed write
            raise OSError(_io_reason(str(exc))) from None


def _io_reason(text: str) -> str:
    """The reason in safetensors' Rust error text (``… message: "No space left on device" …``)."""
    import re

    found = re.search(r'message: "([^"]+)"', text)
    return found.group(1) if found else text.strip().splitlines()[0][:200]


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte header length followed by a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    length = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < length <= path.stat().st_size - 8


def read_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """recog's metadata of a safetensors file without loading its tensors; None when the file is
    missing, unreadable or not recog's."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return json.loads(meta[META_KEY]) if META_KEY in meta else None
    except (SafetensorError, OSError, ValueError):
        return None


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, recog metadata or None) from a safetensors file or a plain tensor state dict."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    kind = {".onnx": "an exported ONNX model", ".pt2": "a torch.export program"}.get(path.suffix.lower())
    if kind is not None:  # said as such, not as the unpickler's complaint
        raise WeightsError(f"{path} is {kind}, not weights: recog predict and recog serve read an .onnx file; "
                           f"training, evaluation and explanations need the run folder or its .safetensors weights")
    if _is_safetensors(path):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
        return state, (json.loads(meta[META_KEY]) if META_KEY in meta else None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the unpickler says, the file is refused
        raise WeightsError(
            f"refusing to load {path}: it is not a safetensors file and not a plain tensor state dict "
            f"({unpickler_reason(exc)}). recog never unpickles arbitrary objects; save weights with "
            f"safetensors."
        ) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return loaded, None


def unpickler_reason(exc: Exception) -> str:
    """torch's message, without its advice to retry with weights_only=False."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        return "the weights-only unpickler found " + text.split("WeightsUnpickler error:")[1].strip().split("\n")[0]
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True) -> list[str]:
    """Copy ``state`` into ``model``. Not strict: keys of another shape (a new head) are left out
    and returned. Strict: any mismatch raises naming the keys."""
    own = model.state_dict()
    state = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state.items()}
    # weights saved before 0.2 carry a duplicate of the last block under "cam_layer." (a module alias)
    state = {k: v for k, v in state.items() if not k.startswith("cam_layer.") or k in own}
    mismatched = [k for k, v in state.items() if k in own and (own[k].shape != v.shape or
                                                               own[k].is_floating_point() != v.is_floating_point())]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (mismatched or missing or unexpected):
        raise WeightsError(
            f"{source} does not fit the model: "
            + "; ".join(
                f"{label}: {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}"
                for label, keys in (("other shape or dtype", mismatched), ("missing", missing),
                                    ("unexpected", unexpected))
                if keys
            )
        )
    usable = {k: v for k, v in state.items() if k in own and k not in mismatched}
    if not usable:
        raise WeightsError(f"{source} shares no parameter names or shapes with the model")
    model.load_state_dict(usable, strict=False)
    return mismatched + missing
