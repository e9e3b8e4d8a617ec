"""Writing files so that a kill never leaves a corrupt one: write a temporary file, then rename."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from recog.errors import ConfigError, OutputError, shown

# the metadata entry (safetensors and ONNX alike) that holds recog's JSON metadata
META_KEY = "recog"


_fault_points = 0


def _fault_point() -> None:
    """Fault injection for the crash-consistency test: with ``RECOG_FAULT_KILL_AT=k`` in the
    environment, the process kills itself (SIGKILL, as the OOM killer or a power cut would) at the
    k-th point: after each temporary file is written, and after each rename. Unset: nothing."""
    global _fault_points
    kill_at = os.environ.get("RECOG_FAULT_KILL_AT")
    if kill_at:
        _fault_points += 1
        if _fault_points == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp's 0600 (or the writer's): as readable as any other file
        _fault_point()
        os.replace(tmp_path, path)
        _fault_point()
    except OSError as exc:  # a full disk, a read-only folder: one line, and the old file is still there
        kept = " (the previous version is intact)" if path.exists() else ""
        raise OutputError(f"could not write {shown(path)}: {exc.strerror or exc}{kept}") from None
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def check_folder(path: str | os.PathLike, what: str) -> None:
    """A folder recog will write into: it may not exist yet, but it must not be a file."""
    p = Path(path).expanduser()
    for part in (p, *p.parents):
        if part.exists():
            if not part.is_dir():
                raise ConfigError(f"{what} {str(path)!r}: {part} is a file, not a folder")
            return


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Temporary files a killed run left beside its files (``.name.XXXX.tmp``), removed at its next start."""
    stale = [p for p in folder.rglob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def next_run_dir(project: str | os.PathLike, name: str | None, default: str = "train") -> Path:
    """A new folder ``project/name``, numbered ``name-2``, ``name-3``… when taken. Never reuses one."""
    root = Path(project)
    base = name or default
    try:
        root.mkdir(parents=True, exist_ok=True)
        for i in range(1, 100_000):
            candidate = root / (base if i == 1 else f"{base}-{i}")
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue
    except OSError as exc:  # a read-only folder or disk, no permission, a full disk
        raise OutputError(f"cannot create a folder in {shown(root)}: {exc.strerror or exc}") from None
    raise RuntimeError(f"no free run folder name under {root}")
