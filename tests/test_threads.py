"""CPU threads as a planner decision: the cores a process may use (affinity, cgroup quota), the count
measured on the model, ``--threads`` to force it; serve and ONNX Runtime take the usable cores."""

from __future__ import annotations

from pathlib import Path

import pytest
import time

import torch

import recog
from recog.cores import cgroup_cpus
from recog.engine.threads import candidates, measure, pick
from recog.errors import ConfigError


def test_a_cgroup_quota_caps_the_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # cgroup v2: 1.5 CPUs
    assert cgroup_cpus(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpus(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpus(v1) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")  # v1 without a quota
    assert cgroup_cpus(v1) is None and cgroup_cpus(tmp_path / "nowhere") is None


def test_the_fewest_threads_within_ten_percent_of_the_fastest_win() -> None:
    assert candidates(2) == [2, 1] and candidates(16) == [16, 8, 1] and candidates(1) == [1]
    assert pick({2: 0.100, 1: 0.160}) == 2  # an idle machine: both cores pay
    assert pick({2: 0.315, 1: 0.068}) == 1  # beside a busy process: threads waiting at barriers lose
    assert pick({2: 0.100, 1: 0.105}) == 1  # no real gain: fewer threads leave the core to others
    assert pick({16: 0.05, 8: 0.052, 1: 0.3}) == 8


def test_measure_times_each_count_and_leaves_the_setting_as_it_was() -> None:
    seen = []
    before = torch.get_num_threads()
    times = measure(lambda: seen.append(torch.get_num_threads()) or time.sleep(0.11), [2, 1], repeats=2)
    assert set(times) == {2, 1} and seen.count(2) == seen.count(1) == 3  # a warm-up and two timed each
    assert torch.get_num_threads() == before
    # a step far shorter than MIN_TIMED_S is timed as a run of steps (up to 100)
    seen.clear()
    measure(lambda: seen.append(torch.get_num_threads()), [2, 1], repeats=2)
    assert seen.count(2) == seen.count(1) == 1 + 2 * 100


def test_threads_given_are_used_and_recorded_and_bad_values_named(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # measured, as for a user
    run = recog.train(data="digits", model="seednet", epochs=1, threads=1, project=str(tmp_path))
    assert run.config.threads == 1 and ", 1 thread, " in capsys.readouterr().err  # the plan line says it
    measured = recog.train(data="digits", model="seednet", epochs=1, project=str(tmp_path))
    assert measured.config.threads in candidates(__import__("recog.cores").cores.usable_cores())
    if len(candidates(__import__("recog.cores").cores.usable_cores())) > 1:
        assert "threads: " in capsys.readouterr().err  # the timings are said
    with pytest.raises(ConfigError, match="threads must be 1 to 1024, got 0"):
        recog.train(data="digits", threads=0, project=str(tmp_path), verbose=False)


def test_serve_refuses_a_bad_thread_count(digits_run, capsys) -> None:
    pytest.importorskip("fastapi")
    from recog.cli import main

    assert main(["serve", str(digits_run.path), "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --threads must be 1 to 1024, got 0"


def test_threads_are_timed_on_a_batch_of_at_most_128_cifar_images_worth_of_pixels(monkeypatch) -> None:
    """Parallel work per layer as in training, no more: 128 images at 32 px, 2 at 224 px (a batch of 32
    there had taken 14 s of a 1-minute budget to time)."""
    from types import SimpleNamespace

    from recog.config import make_config
    from recog.engine import resolve, threads

    seen: list[int] = []
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2))
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "measure", lambda step, counts: (step(), {n: 1.0 for n in counts})[1])
    before = torch.get_num_threads()
    try:
        for side, batch in ((32, 1024), (224, 32), (28, 64), (8, 512)):
            cfg = make_config(None, batch_size=batch, verbose=False)
            resolve._plan_threads(cfg, model, SimpleNamespace(channels=3, image_size=side), torch.device("cpu"))
    finally:
        torch.set_num_threads(before)
    assert seen == [128, 2, 64, 128]
