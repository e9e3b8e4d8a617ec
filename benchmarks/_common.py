"""Shared by the benchmark scripts: the machine's description and the unpacked shared CIFAR-10 copies."""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RECOG_SHARED_DATA", ROOT.parent / "shared" / "data"))
CACHE = Path(os.environ.get("RECOG_CACHE", Path.home() / ".cache" / "recog"))


def machine() -> dict[str, object]:
    import torch

    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), cpu)
        flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "amx": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def machine_line(info: dict[str, object], **versions: str) -> str:
    """The machine as the benchmarks print it: CPU, cores, bf16 units, torch and other versions."""
    extra = "".join(f", {name} {version}" for name, version in versions.items())
    return (f"machine: {info['cpu']}, {info['cores']} cores, AVX-512-BF16 {info['avx512_bf16']}, AMX {info['amx']}, "
            f"torch {info['torch']}{extra}")


@contextlib.contextmanager
def worktree(commit: str) -> Iterator[Path]:
    """A ``git worktree`` of ``commit`` in a temporary folder, removed afterwards: a past commit's own code
    (its ``src`` for PYTHONPATH), benchmarks and configs, to run beside today's."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "old"
        added = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit],
                               capture_output=True, text=True)
        if added.returncode:
            sys.exit(f"no git worktree of {commit!r}: {added.stderr.strip().splitlines()[-1] if added.stderr else ''}")
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def cifar10_folder(kind: str = "png") -> Path:
    """The shared CIFAR-10 copy unpacked once into the cache folder (never into the repository)."""
    target = CACHE / f"cifar10-{kind}"
    if not (target / "test").is_dir():
        archive = SHARED_DATA / f"cifar10-{kind}.tar.gz"
        if not archive.is_file():
            sys.exit(f"shared CIFAR-10 copy not found: {archive} (set RECOG_SHARED_DATA)")
        tmp = target.with_name(target.name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        tmp.rename(target)
    return target


def hymenoptera() -> Path:
    """The shared ants/bees photos (train/ and val/ of varying size) unpacked once into the cache folder."""
    target = CACHE / "bench" / "hymenoptera"
    if not (target / "val").is_dir():
        tmp = target.with_name(target.name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        with tarfile.open(SHARED_DATA / "hymenoptera.tar.gz") as tar:
            tar.extractall(tmp, filter="data")
        inner = next((p for p in tmp.rglob("train") if p.is_dir()), None)
        (inner.parent if inner else tmp).rename(target)
    return target
