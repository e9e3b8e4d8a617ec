"""Where and how a run computes: the device, the precision, deterministic kernels, seeds."""

from __future__ import annotations

import contextlib
import functools
import os
import random
import sys
from collections.abc import Iterator

import numpy as np
import torch

from recog.errors import ConfigError


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module, train: bool = False) -> Iterator[torch.nn.Module]:
    """The model in eval mode (``train``: train mode) for the block, then in the mode it was in."""
    was = model.training
    model.train(train)
    try:
        yield model
    finally:
        model.train(was)


def resolve_device(name: str) -> torch.device:
    """``auto`` is the GPU when there is one; a CUDA device on a machine without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix units (AMX tiles or AVX-512-BF16), by torch's own checks."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check() for check in checks if check is not None)


def has_bf16(device: torch.device) -> bool:
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()


def resolve_precision(precision: str, device: torch.device, verbose: bool = True, doing: str = "training") -> str:
    """``auto``: bf16 on CUDA GPUs that have it and CPUs with AMX / AVX-512-BF16, else fp32 (said once,
    as ``doing`` in fp32)."""
    bf16 = has_bf16(device)
    if precision == "auto":
        if not bf16 and verbose:
            print(f"note: no bf16 matrix units on this {device.type}: {doing} in fp32", file=sys.stderr)
        return "bf16" if bf16 else "fp32"
    if precision == "bf16" and not bf16 and verbose:
        print("note: this CPU has no bf16 matrix units (AMX / AVX-512-BF16): bf16 autocast will be slow",
              file=sys.stderr)
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """Deterministic kernels for the duration of a run; the previous setting is restored after."""
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    cudnn_before = torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
        torch.backends.cudnn.benchmark = cudnn_before


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
