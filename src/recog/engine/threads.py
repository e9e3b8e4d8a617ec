"""How many threads a CPU run computes with: a planner decision, measured.

PyTorch's default is one intra-op thread per core it sees. That is wrong twice over on the machines
people use: a container may see every core of its host but be allowed a fraction of them (a cgroup
CPU quota), and a laptop, CI runner or shared server is often busy with another process, where
OpenMP threads that wait for each other at every operator's barrier lose their turn to it and the
whole step waits (measured on a 2-core machine beside one CPU-bound process: `recog train --data
digits --epochs 3` took 90 s with 2 threads and 19.6 s with 1).

So the count is chosen from the cores this process may use (:func:`usable_cores`: its affinity mask
and its cgroup quota), then measured: a few training steps of a throw-away copy of the model at
each candidate count (:func:`candidates`), and the fewest threads within :data:`MARGIN` of the
fastest win (:func:`pick`). ``--threads N`` (or ``OMP_NUM_THREADS``) decides instead.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch

from recog.cores import usable_cores  # noqa: F401  (re-exported: the planner's view of the machine)

MARGIN = 0.10  # more threads must be this much faster to be chosen
MAX_STEP_S = 0.5  # a step slower than this at full threads is not timed again (large models: the cost)
MIN_TIMED_S = 0.1  # a faster step is timed as a run of steps this long


def candidates(cores: int) -> list[int]:
    """The counts worth timing: all usable cores, half of them, one."""
    return sorted({cores, max(1, cores // 2), 1}, reverse=True)


def pick(times: dict[int, float]) -> int:
    """The fewest threads whose step time is within :data:`MARGIN` of the fastest."""
    fastest = min(times.values())
    return min(n for n, t in times.items() if t <= fastest * (1 + MARGIN))


def measure(step: Callable[[], None], counts: list[int], repeats: int = 3) -> dict[int, float]:
    """Seconds per ``step`` at each thread count (the median of ``repeats`` after a warm-up: a busy
    machine's lucky moment is not the run's speed, nor a quiet machine's stall), the counts
    interleaved so that a change in the machine's load falls on all of them; the thread count is left
    as it was. A step shorter than :data:`MIN_TIMED_S` is timed as a run of steps that long: a
    millisecond step can fall between another process's time slices and hide the waits that a
    thousand of them meet in training. A step over :data:`MAX_STEP_S` at the first count stops the
    measurement there."""
    before = torch.get_num_threads()
    samples: dict[int, list[float]] = {}
    runs = 1
    try:
        for n in counts:  # warm-up at each count (oneDNN builds its primitives per thread count)
            torch.set_num_threads(n)
            started = time.perf_counter()
            step()
            if n == counts[0]:
                runs = max(1, min(100, math.ceil(MIN_TIMED_S / max(time.perf_counter() - started, 1e-6))))
        for round_ in range(repeats):
            for n in counts:
                torch.set_num_threads(n)
                started = time.perf_counter()
                for _ in range(runs):
                    step()
                samples.setdefault(n, []).append((time.perf_counter() - started) / runs)
                if round_ == 0 and n == counts[0] and samples[n][0] > MAX_STEP_S:
                    return {n: samples[n][0]}  # a large model: the other counts are not worth their time
    finally:
        torch.set_num_threads(before)
    return {n: statistics.median(ts) for n, ts in samples.items()}


def describe(chosen: int, times: dict[int, float], cores: int) -> str:
    if len(times) < 2:
        return f"{chosen} thread{'s' if chosen != 1 else ''} ({cores} usable cores)"
    timed = ", ".join(f"{n}: {1000 * t:.0f} ms" for n, t in sorted(times.items(), reverse=True))
    return f"{chosen} thread{'s' if chosen != 1 else ''} (a step took {timed}; {cores} usable cores)"
