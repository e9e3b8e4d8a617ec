"""DDP under torchrun with real processes: gloo on the CPU, the bundled digits, a few epochs each."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import recog
from recog.errors import ConfigError

WORKER = Path(__file__).parent / "helpers" / "ddp_worker.py"
ARGS = ["--data", "digits", "--model", "seednet", "--epochs", "3", "--seed", "0"]  # 20 steps of 64 an epoch


def torchrun(launcher: list[str], args: list[str], env: dict[str, str] | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess:
    """``torchrun LAUNCHER tests/helpers/ddp_worker.py train ARGS``: one thread per process (2 cores)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, str(WORKER), "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)


def rank_lines(stderr: str) -> dict[int, tuple[int, str]]:
    """rank -> (images it trained on, its weights' checksum), from the line each rank prints."""
    found = re.findall(r"rank (\d)/2: trained on (\d+) images; weights sha256 (\w+)", stderr)
    return {int(r): (int(n), h) for r, n, h in found}


def test_two_processes_train_one_model_as_one_process_would(tmp_path: Path) -> None:
    one = recog.train(data="digits", model="seednet", epochs=3, seed=0, project=str(tmp_path / "one"), verbose=False)
    done = torchrun(["--standalone", "--nproc-per-node", "2"], [*ARGS, "--project", str(tmp_path / "two")],
                    env={"RECOG_TEST_RANK1_ARGS": "--batch-size 32"})  # rank 1 started with another config
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning: rank 1 was started with a config that differs from rank 0's in batch_size (32 here, None on " \
           "rank 0" in done.stderr
    run = tmp_path / "two" / "train"
    two = json.loads((run / "report.json").read_text())
    # the same recipe at the same global batch and seed: the same accuracy within a point
    assert abs(two["accuracy"] - one.report["accuracy"]) <= 0.01, (two["accuracy"], one.report["accuracy"])
    ranks = rank_lines(done.stderr)
    assert set(ranks) == {0, 1}
    images_one = 3 * (1295 // 64) * 64  # 3 epochs of digits' 1,295 training images in full batches of 64
    assert ranks[0][0] == ranks[1][0] == images_one // 2  # each rank half of every step's images
    assert ranks[0][1] == ranks[1][1]  # and the same weights at the end
    assert (run / "config.yaml").read_text().count("world_size: 2") == 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["train"]  # one run folder, written by rank 0
    assert "module." not in "".join(recog.load(run).model.state_dict())
    # the weights load and evaluate in one plain process: the test images counted once, as in the run
    again = recog.evaluate(run, out=tmp_path / "eval", verbose=False)
    assert again["num_images"] == two["num_images"] == one.report["num_images"]
    assert again["accuracy"] == pytest.approx(two["accuracy"])


def test_a_worker_that_dies_is_restarted_and_the_run_resumes_in_its_folder(tmp_path: Path, cifar_png: Path) -> None:
    """An image folder: rank 0 decodes it into the cache, the other rank maps it; after a worker dies
    in epoch 2, torchrun restarts both and they continue the same run folder from epoch 2."""
    args = ["--data", str(cifar_png), "--model", "seednet", "--epochs", "3", "--batch-size", "32"]  # 8 steps/epoch
    done = torchrun(["--standalone", "--nproc-per-node", "2", "--max-restarts", "1"],
                    [*args, "--project", str(tmp_path / "runs")],
                    env={"RECOG_TEST_EXIT_AT": "1:12", "RECOG_CACHE": str(tmp_path / "cache")})  # a cold cache:
    # other tests decode the same images into the session's cache, and then nobody decodes here
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torchrun restart 1: continuing" in done.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["train"]
    with (tmp_path / "runs" / "train" / "metrics.csv").open() as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2", "3"]  # epoch 1 was not trained again
    assert json.loads((tmp_path / "runs" / "train" / "report.json").read_text())["num_images"] == 100
    # decoded once, by rank 0; rank 1 and the restarted workers read the cache
    assert re.findall(r"rank (\d) decoded \d+ files", done.stderr) in (["0"], ["0", "0"])  # one call per split


def test_a_hung_worker_stops_the_run_after_the_timeout_with_a_message_naming_the_rank(tmp_path: Path) -> None:
    # the hung rank sleeps 600 s: returning well before that (no TimeoutExpired at 400 s) is the behaviour
    done = torchrun(["--standalone", "--nproc-per-node", "2"],
                    [*ARGS, "--epochs", "1", "--dist-timeout", "5s", "--project", str(tmp_path)],
                    env={"RECOG_TEST_HANG_AT": "1:3"}, timeout=400)
    assert done.returncode != 0
    assert re.search(r"error: rank 0 of 2: waited --dist-timeout 5 s", done.stderr), done.stderr[-3000:]
    assert "Traceback" not in done.stderr.split("error: rank 0")[0][-500:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_meet_at_a_c10d_rendezvous_and_train_one_model_in_a_time_budget(tmp_path: Path) -> None:
    """Two launches as two machines would make them (here both on localhost), with the small recipe's
    stem freeze after one epoch (DDP built again mid-run) and a time budget whose calibration times
    the frozen-stem steps too (freeze, re-wrap, undo, re-wrap) on both."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # 30 s: the budget counts from each worker's start (its imports too), and two epochs must fit
    args = ["--data", "digits", "--time-budget", "30s", "--freeze-stem-epochs", "1", "--project", str(tmp_path)]
    launches = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--node-rank",
         str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "recog-test",
         str(WORKER), "train", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for node in (0, 1)]
    outputs = [p.communicate(timeout=600) for p in launches]
    assert [p.returncode for p in launches] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    ranks = rank_lines(outputs[0][1] + outputs[1][1])
    assert set(ranks) == {0, 1} and ranks[0] == ranks[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]
    config = (tmp_path / "train" / "config.yaml").read_text()
    assert "world_size: 2" in config and "time_budget: 30s" in config
    assert json.loads((tmp_path / "train" / "report.json").read_text())["accuracy"] > 0.5
    with (tmp_path / "train" / "metrics.csv").open() as f:
        assert len(list(csv.DictReader(f))) >= 2  # past the stem freeze after epoch 1: DDP was rebuilt mid-run


def test_bad_distributed_settings_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from recog.cli import main

    with pytest.raises(ConfigError, match="SyncBatchNorm runs on CUDA"):
        from recog.engine.distributed import sync_batch_norm

        sync_batch_norm(recog.create_model("seednet", 10, 1, 8), __import__("torch").device("cpu"), True)
    assert main(["train", "--dist-timeout", "soon", "--project", str(tmp_path)]) == 2
    assert "dist_timeout: cannot read 'soon'" in capsys.readouterr().err
    assert main(["train", "--nproc", "0", "--project", str(tmp_path)]) == 2
    # --nproc N hands over to torch.distributed.run with the cores shared out
    import torch.distributed.run

    launched: list[list[str]] = []
    monkeypatch.setattr(torch.distributed.run, "main", launched.append)
    monkeypatch.setenv("OMP_NUM_THREADS", "0")  # recorded, so that the value set below is undone after the test
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    assert main(["train", "--epochs", "1", "--nproc", "2", "--project", str(tmp_path)]) == 0
    assert launched == [["--standalone", "--nproc-per-node=2", "-m", "recog", "train", "--epochs", "1", "--project",
                         str(tmp_path)]]
    assert os.environ["OMP_NUM_THREADS"] == "2"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert main(["train", "--epochs", "1", "--project", str(tmp_path)]) == 2
    assert "start distributed training with torchrun" in capsys.readouterr().err


def test_transfer_from_a_checkpoint_under_torchrun(tmp_path: Path, cifar_png: Path) -> None:
    """A cached-feature strategy under DDP (partial: the probe's head fit, then the tail): every rank
    trains the same tail on the same activations, rank 0 writes, and the ranks end with the same
    weights; the run evaluates as one."""
    transfer = "partial"
    from safetensors.torch import save_file

    from recog.models import create_model

    donor = create_model("tv:resnet18", 7, 3, 32)
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(tmp_path / "donor.safetensors"))
    done = torchrun(["--standalone", "--nproc-per-node", "2"],
                    ["--data", str(cifar_png), "--model", "tv:resnet18", "--pretrained",
                     str(tmp_path / "donor.safetensors"), "--transfer", transfer, "--epochs", "2",
                     "--project", str(tmp_path / "runs")])
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = rank_lines(done.stderr)
    assert set(ranks) == {0, 1} and ranks[0][1] == ranks[1][1]  # the same weights on both ranks
    report = json.loads((tmp_path / "runs" / "train" / "report.json").read_text())
    assert report["num_images"] == 100
    assert recog.evaluate(tmp_path / "runs" / "train", out=tmp_path / "eval", verbose=False)["accuracy"] == \
        pytest.approx(report["accuracy"])
