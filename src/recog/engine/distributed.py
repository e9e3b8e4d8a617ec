"""Training on several processes with PyTorch's own engine: ``torchrun`` launches the workers,
c10d's rendezvous finds them, DistributedDataParallel averages the gradients.

Everything a run does on more than one process goes through the few functions here, so the
engine reads the same with one process or many (each is a no-op for one):

- :func:`process_group` joins the group (gloo on CPUs, NCCL on GPUs) with a timeout, and turns a
  collective that timed out or lost a peer into a :class:`~recog.errors.TrainingError` that names
  the rank, instead of a hang or a C++ trace.
- :func:`broadcast` is how rank 0's decisions (the resolved config, the run folder, a re-planned
  time budget, a stop) become everyone's; :func:`all_sum` and :func:`gather` make the epoch's
  figures and the evaluation's logits the same on every rank.
- :func:`in_turns` lets rank 0 decode an image folder into the cache before the others read it.
- :func:`wrap` puts the model in DDP (re-wrapped after a change of its trainable parameters).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from recog.errors import ConfigError, TrainingError

T = TypeVar("T")
MARKER = "torchrun.json"  # in a run folder: which torchrun job trains it (found again after a restart)


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def restart_count() -> int:
    """How often torchrun restarted the workers (``--max-restarts``): 0 on the first attempt."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def active() -> bool:
    """True inside a process group of more than one process."""
    return world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


# ---- joining and leaving -----------------------------------------------------------------------

@contextlib.contextmanager
def process_group(device: torch.device, timeout_s: float) -> Iterator[None]:
    """Join the process group under torchrun (``WORLD_SIZE`` > 1), leave it at the end; a timed-out
    or broken collective inside becomes a TrainingError naming this rank. Outside torchrun: nothing."""
    if world_size() <= 1 or torch.distributed.is_initialized():
        yield
        return
    if "MASTER_ADDR" not in os.environ:
        raise ConfigError(f"WORLD_SIZE is {world_size()} but MASTER_ADDR is not set: start distributed "
                          f"training with torchrun (or recog train --nproc N), not by setting WORLD_SIZE alone")
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank())
    timeout = datetime.timedelta(seconds=timeout_s)
    with guard(timeout_s):
        # torchrun's store outlives a restart of the workers, and with it the previous attempt's
        # addresses: a store prefix per attempt (else a restarted gloo group dials the dead workers)
        from torch.distributed.rendezvous import rendezvous

        store, rank_, world = next(rendezvous("env://", timeout=timeout))
        store = torch.distributed.PrefixStore(f"recog/attempt_{restart_count()}", store)
        torch.distributed.init_process_group("nccl" if cuda else "gloo", store=store, rank=rank_,
                                             world_size=world, timeout=timeout)
    try:
        with guard(timeout_s):
            yield
    finally:
        with contextlib.suppress(Exception):
            torch.distributed.destroy_process_group()


def device_for(device: torch.device) -> torch.device:
    """Under torchrun each process on a machine takes its own GPU (``LOCAL_RANK``)."""
    if device.type == "cuda" and world_size() > 1 and device.index is None:
        return torch.device("cuda", local_rank())
    return device


def set_threads() -> None:
    """The cores shared by the processes on this machine, unless OMP_NUM_THREADS says otherwise
    (torchrun sets 1 when it starts several processes; ``recog train --nproc`` sets the share)."""
    if world_size() > 1 and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // local_world_size()))


_BROKEN = ("timed out", "timeout", "connection closed by peer", "connection reset by peer", "pair closure", "nccl",
           "broken pipe")


@contextlib.contextmanager
def guard(timeout_s: float) -> Iterator[None]:
    """A collective that timed out or lost a peer: one clear error naming this rank."""
    try:
        yield
    except RuntimeError as exc:
        text = str(exc)
        dist_error = getattr(torch.distributed, "DistError", ())
        low = text.lower()
        if not (isinstance(exc, dist_error) or any(s in low for s in _BROKEN)):
            raise
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        if "timed out" in low or "timeout" in low:
            why = (f"waited --dist-timeout {timeout_s:g} s for the other processes at a collective: another rank "
                   f"is hung, much slower, or stopped")
        else:
            why = "lost the connection to another rank (it crashed or was stopped; its own output says why)"
        raise TrainingError(f"rank {rank()} of {world_size()}: {why} ({first})") from None


# ---- collectives (no-ops on one process) -------------------------------------------------------

def broadcast(value: T) -> T:
    """Rank 0's ``value`` on every rank."""
    if not active():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: T) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not active():
        return [value]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, value)
    return out


def all_sum(*tensors: torch.Tensor) -> None:
    """Sum each tensor over the ranks, in place."""
    if active():
        for t in tensors:
            torch.distributed.all_reduce(t)


def all_finite(value: torch.Tensor) -> bool:
    """Whether ``value`` is finite on every rank: a NaN loss on one stops all of them, together."""
    ok = torch.isfinite(value.detach()).all()
    if not active():
        return bool(ok)
    flag = ok.to(torch.float32).reshape(1)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def any_rank(flag: bool) -> bool:
    return any(gather(bool(flag)))


def from_rank0(work: Callable[[], T]) -> T:
    """Run ``work`` on rank 0 only and give its result to every rank; its error stops every rank."""
    if not active():
        return work()
    result: Any = None
    error = None
    if is_main():
        try:
            result = work()
        except Exception as exc:  # noqa: BLE001 - the others must hear of it, then it is raised
            error = exc
    shared = broadcast((result, None if error is None else (type(error).__name__, str(error))))
    if error is not None:
        raise error
    if shared[1] is not None:
        kind, text = shared[1]
        raise TrainingError(f"rank 0 failed ({kind}): {text}")
    return shared[0]


def in_turns(work: Callable[[], T]) -> T:
    """Run ``work`` on rank 0 first, then on the first process of each other machine, then on the
    rest: rank 0 decodes an image folder into the cache while the others wait, and then read it
    (a cache on a shared filesystem is decoded once; one per machine, once per machine). An error
    on any rank stops every rank with that message."""
    if not active():
        return work()
    turn = 0 if rank() == 0 else 1 if local_rank() == 0 else 2
    result: Any = None
    for now in range(3):
        error = None
        if turn == now:
            try:
                result = work()
            except Exception as exc:  # noqa: BLE001 - every rank must hear of it, then it is raised
                error = exc
        errors = gather(None if error is None else (type(error).__name__, str(error)))
        if error is not None:
            raise error
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
        if failed:
            r, (kind, text) = failed[0]
            raise TrainingError(f"rank {r} failed ({kind}): {text}")
    return result


def shard(n: int) -> slice:
    """This rank's contiguous part of ``n`` items for evaluation (every item once over the ranks;
    gathered in rank order they are in their original order)."""
    if not active():
        return slice(0, n)
    w, r = world_size(), rank()
    return slice(n * r // w, n * (r + 1) // w)


# ---- the model -------------------------------------------------------------------------------

def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around ``model`` (which keeps its own parameter names: saved weights have no ``module.``).
    Construction broadcasts rank 0's parameters and buffers, so every rank starts the same."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sync_batch_norm(model: nn.Module, device: torch.device, wanted: bool) -> nn.Module:
    if not wanted:
        return model
    if device.type != "cuda":
        raise ConfigError("sync_bn: SyncBatchNorm runs on CUDA tensors only, not on the CPU; leave --sync-bn "
                          "off (each CPU process normalises its own slice of the batch)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if active() else model


def broadcast_state(model: nn.Module, buffers_only: bool = False) -> None:
    """Rank 0's buffers (batch-norm running statistics: each rank updated its own in its last
    steps) and, unless ``buffers_only``, parameters, on every rank."""
    if not active():
        return
    with torch.no_grad():
        for t in [*([] if buffers_only else model.parameters()), *model.buffers()]:
            torch.distributed.broadcast(t.data, src=0)


def checksum(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# ---- restarts --------------------------------------------------------------------------------

def job_key() -> str:
    """What names this torchrun job across its restarts: the rendezvous id when one is given
    (--rdzv-id, or --standalone's own), else this machine's agent process."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    return run_id if run_id not in ("", "none") else f"{socket.gethostname()}:{os.getppid()}"


def mark(run_dir: Path) -> None:
    """Rank 0 notes in the run folder which job trains it, so that a restart continues it."""
    if world_size() > 1 and is_main():
        from recog.fileio import atomic_write_text

        atomic_write_text(run_dir / MARKER, json.dumps({"job": job_key(), "world_size": world_size(),
                                                         "started": time.time()}))


def restarted_run(project: str | os.PathLike) -> Path | None:
    """After a torchrun restart: the run folder this job was training (the newest that names it)."""
    if restart_count() == 0:
        return None
    key, found = job_key(), []
    for marker in Path(project).expanduser().glob(f"*/{MARKER}"):
        try:
            if json.loads(marker.read_text()).get("job") == key:
                found.append((marker.stat().st_mtime, marker.parent))
        except (OSError, ValueError):
            continue
    if not found:
        print(f"warning: torchrun restart {restart_count()}: no run folder in {project} names this job "
              f"({key}); starting a new run", file=sys.stderr)
        return None
    return max(found)[1]
