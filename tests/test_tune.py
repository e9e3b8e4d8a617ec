"""recog tune: Optuna studies of ordinary recog runs on real data; resumable, pruned through the
epoch hook, never reading the test split, ending with a config to train with."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import recog
from recog.cli import main
from recog.errors import ConfigError

optuna = pytest.importorskip("optuna")

from recog.tuning import tune  # noqa: E402


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_study_runs_resumes_with_numbering_continued_and_its_best_config_trains(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    result = tune(data="digits", model="seednet", trials=3, epochs=2, pruner="none", project=str(tmp_path),
                  verbose=False)
    folder = tmp_path / "tune" / "digits-seednet"
    assert result.folder == folder and (folder / "study.db").is_file()
    assert [r["number"] for r in _rows(folder)] == ["0", "1", "2"]
    assert result.best_value is not None and 0.0 < result.best_value <= 1.0
    best = yaml.safe_load(result.best_config.read_text())
    assert best["model"] == "seednet" and best["data"] == "digits" and "final_eval" not in best
    assert set(best["model_args"]) >= {"kernel_sizes", "channels", "fc"}  # the architecture was searched
    # the same command again: the same study, 2 more trials, numbers 3 and 4
    assert main(["tune", "--data", "digits", "--model", "seednet", "--trials", "2", "--epochs", "2", "--pruner",
                 "none", "--project", str(tmp_path)]) == 0
    rows = _rows(folder)
    assert [r["number"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert sorted(p.name for p in (folder / "trials").iterdir()) == [f"trial-{i:04d}" for i in range(5)]
    for r in rows:  # each trial is an ordinary run that evaluated on val
        cfg = yaml.safe_load((Path(r["run"]) / "config.yaml").read_text())
        assert cfg["final_eval"] == "val"
    best_value = max(float(r["value"]) for r in rows if r["state"] == "complete")
    assert f"best validation score {best_value:.4f}" in (folder / "best.yaml").read_text()
    assert (folder / "history.png").is_file() and (folder / "importances.png").is_file()
    capsys.readouterr()
    assert main(["tune", "--show", "digits-seednet", "--project", str(tmp_path)]) == 0
    board = capsys.readouterr().out.splitlines()
    assert board[0].startswith("study digits-seednet: 5 trials") and board[1].split()[:3] == ["rank", "trial", "val"]
    assert float(board[2].split()[2]) == pytest.approx(best_value, abs=1e-4)  # the best trial first
    run = recog.train(config=str(folder / "best.yaml"), epochs=1, project=str(tmp_path / "after"), verbose=False)
    assert run.config.model_args == yaml.safe_load((folder / "best.yaml").read_text())["model_args"]


def test_trials_never_read_the_test_split(cifar_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    opened: list[str] = []
    real_open = Image.open

    def spy(fp, *args, **kwargs):  # noqa: ANN001, ANN202
        opened.append(os.fspath(fp) if isinstance(fp, (str, os.PathLike)) else str(getattr(fp, "name", "")))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    space = tmp_path / "space.yaml"
    space.write_text("lr: {float: [0.01, 0.1], log: true}\n")
    result = tune(data=str(cifar_png), model="airnet_small", trials=1, epochs=1, space=space, pruner="none",
                  project=str(tmp_path), verbose=False, cache=False)
    test_dir = str(cifar_png / "test")
    assert opened and any(str(cifar_png / "train") in p for p in opened)  # the spy saw the reads
    assert not [p for p in opened if p.startswith(test_dir)]
    report = yaml.safe_load((Path(result.trials[0]["run"]) / "report.json").read_text())
    assert report["split"] == "val"


def test_a_pruned_trial_stops_its_run_after_the_reported_epoch(tmp_path: Path) -> None:
    result = tune(data="digits", model="seednet", trials=1, epochs=3, project=str(tmp_path), verbose=False,
                  pruner=optuna.pruners.ThresholdPruner(lower=2.0))  # no accuracy reaches 2: pruned at epoch 1
    (row,) = result.trials
    assert row["state"] == "pruned" and row["epochs"] == 1
    with open(Path(row["run"]) / "metrics.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 1
    assert result.best_config is None and not (result.folder / "best.yaml").exists()


def test_bad_spaces_and_options_are_named(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {float: [0.01, 0.1]}\n")
    with pytest.raises(ConfigError, match=r"space.yaml: 'learning_rate' is not a training option"):
        tune(space=space, project=str(tmp_path), verbose=False)
    space.write_text("lr: {float: [0.1, 0.01]}\n")
    with pytest.raises(ConfigError, match=r"lr: float needs \[low, high\] with low < high"):
        tune(space=space, project=str(tmp_path), verbose=False)
    space.write_text("lr: {float: [0, 0.1], log: true}\n")
    with pytest.raises(ConfigError, match="log scale needs low > 0"):
        tune(space=space, project=str(tmp_path), verbose=False)
    with pytest.raises(ConfigError, match="--space .*no such file"):
        tune(space=tmp_path / "missing.yaml", project=str(tmp_path), verbose=False)
    with pytest.raises(ConfigError, match="--pruner must be one of.*hyperband"):
        tune(model="seednet", pruner="hyperbnd", project=str(tmp_path), verbose=False)
    with pytest.raises(ConfigError, match="recog tune sets final_eval itself"):
        tune(model="seednet", final_eval="test", project=str(tmp_path), verbose=False)
    with pytest.raises(ConfigError, match="batch_size"):  # a bad fixed option fails before any trial
        tune(model="seednet", batch_size=0, project=str(tmp_path), verbose=False)
    tune(model="seednet", study="s", trials=1, epochs=1, project=str(tmp_path), verbose=False)
    with pytest.raises(ConfigError, match="study s was made for model 'seednet'"):
        tune(model="airnet_small", study="s", trials=1, epochs=1, project=str(tmp_path), verbose=False)


def test_without_optuna_one_line_says_what_to_install() -> None:
    code = ("import sys; sys.modules['optuna'] = None; from recog.cli import main; "
            "sys.exit(main(['tune', '--trials', '1']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: recog tune needs Optuna: pip install 'recog[tune]' (from a clone: pip install -e \".[tune]\")"


def test_jobs_run_trials_in_parallel_worker_processes(tmp_path: Path) -> None:
    result = tune(data="digits", model="seednet", trials=2, epochs=1, jobs=2, pruner="none", project=str(tmp_path),
                  verbose=False)
    rows = _rows(result.folder)
    assert sorted(int(r["number"]) for r in rows) == [0, 1] and {r["state"] for r in rows} == {"complete"}
    assert sorted(r["worker"] for r in rows) == ["1", "2"]  # two processes, one trial each, each recorded once
    assert result.best_config.is_file()


POSTGRES = os.environ.get("RECOG_TEST_POSTGRES")  # .ci/run starts a PostgreSQL server and sets it


@pytest.mark.skipif(not POSTGRES, reason="no PostgreSQL server: set RECOG_TEST_POSTGRES=postgresql+psycopg://"
                                         "user:password@host/db (.ci/run starts one)")
def test_two_machines_share_a_study_in_postgresql(tmp_path: Path) -> None:
    import uuid

    name = f"ci-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "recog", "tune", "--data", "digits", "--model", "seednet", "--epochs", "1",
               "--trials", "1", "--pruner", "none", "--study", name, "--storage", POSTGRES]
    machines = [subprocess.Popen(command + ["--project", str(tmp_path / f"machine{i}")], stderr=subprocess.PIPE,
                                 text=True) for i in range(2)]
    errors = [m.communicate(timeout=300)[1] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], errors
    study = optuna.load_study(study_name=name, storage=POSTGRES)
    try:
        assert sorted(t.number for t in study.trials) == [0, 1]
        runs = {Path(t.user_attrs["run"]).parts[-5] for t in study.trials}  # machineN/tune/NAME/trials/trial-…
        assert runs == {"machine0", "machine1"}
    finally:
        optuna.delete_study(study_name=name, storage=POSTGRES)


def test_a_killed_workers_trial_is_failed_by_its_heartbeat_and_retried_once(tmp_path: Path) -> None:
    import signal
    import time

    code = ("from recog.tuning import tune; tune(data='digits', model='seednet', trials=1, epochs=500, pruner='none', "
            f"project={str(tmp_path)!r}, verbose=False, heartbeat=1)")
    worker = subprocess.Popen([sys.executable, "-c", code])
    metrics = tmp_path / "tune" / "digits-seednet" / "trials" / "trial-0000" / "metrics.csv"
    for _ in range(600):  # until its trial has trained an epoch
        if metrics.is_file() or worker.poll() is not None:
            break
        time.sleep(0.1)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    assert worker.returncode == -signal.SIGKILL
    time.sleep(3.5)  # past the grace period of 3 missed heartbeats
    result = tune(data="digits", model="seednet", trials=1, epochs=1, pruner="none", project=str(tmp_path),
                  verbose=False, heartbeat=1)
    states = [(r["number"], r["state"]) for r in result.trials]
    assert states == [(0, "fail"), (1, "complete")]  # failed, then run again once
    study = optuna.load_study(study_name="digits-seednet", storage=result.storage)
    killed, retried = study.trials
    assert retried.params == killed.params
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", optuna.storages.RetryFailedTrialCallback)
    assert retry.retried_trial_number(retried) == 0


def test_lr_find_on_digits_suggests_a_sane_rate_and_plots_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["lr-find", "--data", "digits", "--model", "seednet", "--optimizer", "sgd", "--batch-size", "64",
                 "--scan-steps", "120", "--project", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    suggested = float(out.split("suggested lr ")[1].split()[0])
    assert 1e-4 <= suggested <= 1.0  # SGD on digits learns between ~1e-3 and ~1
    folder = tmp_path / "lr-find"
    assert (folder / "lr_find.png").is_file()
    with open(folder / "lr_find.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lrs = [float(r["lr"]) for r in rows]
    assert 20 <= len(rows) <= 120 and lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-6)
    from recog.lr_range import lr_find

    with pytest.raises(ConfigError, match="--start-lr and --end-lr"):
        lr_find(start_lr=1.0, end_lr=0.1, project=str(tmp_path))


def test_lr_auto_runs_the_range_test_first_and_trains_with_its_suggestion(tmp_path: Path) -> None:
    run = recog.train(data="digits", model="airnet_small", epochs=6, lr="auto", project=str(tmp_path), verbose=False)
    with open(tmp_path / "lr-find" / "lr_find.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) >= 20
    assert isinstance(run.config.lr, float) and 1e-4 <= run.config.lr <= 10
    assert yaml.safe_load((run.path / "config.yaml").read_text())["lr"] == run.config.lr  # recorded as a number
    # a good model, not the best lr: bf16 on an AMX CPU, the suggestion 1.0 gave 96.1% (0.33: 99.2%, 3.0: 98.1%)
    assert run.report["accuracy"] >= 0.95


def test_several_objectives_give_a_pareto_front_and_its_most_accurate_point(tmp_path: Path) -> None:
    result = tune(data="digits", model="seednet", trials=3, epochs=1, objectives=("accuracy", "latency", "params"),
                  project=str(tmp_path), verbose=False)
    rows = [r for r in _rows(result.folder) if r["state"] == "complete"]
    assert len(rows) == 3 and all(len(json.loads(r["values"])) == 3 for r in rows)
    for r in rows:
        accuracy, latency_ms, params = json.loads(r["values"])
        assert 0 <= accuracy <= 1 and latency_ms > 0 and params > 1000
    front = [r for r in rows if r["pareto"] == "yes"]
    assert front and (result.folder / "pareto.png").is_file()
    assert result.best_value == pytest.approx(max(json.loads(r["values"])[0] for r in front), abs=1e-6)
    with pytest.raises(ConfigError, match="study digits-seednet was made for objectives"):
        tune(data="digits", model="seednet", trials=1, epochs=1, project=str(tmp_path), verbose=False)
    with pytest.raises(ConfigError, match="unknown 'latncy'.*latency"):
        tune(objectives=("accuracy", "latncy"), project=str(tmp_path), verbose=False)
    with pytest.raises(ConfigError, match="accuracy first"):
        tune(objectives=("params", "accuracy"), project=str(tmp_path), verbose=False)
    with pytest.raises(ConfigError, match="run unpruned"):
        tune(objectives=("accuracy", "params"), pruner="median", project=str(tmp_path), verbose=False)


def test_a_trial_that_raises_is_recorded_failed_and_the_study_goes_on(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"  # five conv-pool blocks leave nothing of an 8-px digit: that trial raises
    space.write_text("model_args:\n  choice:\n    - {kernel_sizes: [3, 3, 3, 3, 3], channels: [4, 4, 4, 4, 4]}\n"
                     "    - {kernel_sizes: [3], channels: [8]}\n")
    result = tune(data="digits", model="seednet", trials=4, epochs=1, space=space, pruner="none",
                  project=str(tmp_path), verbose=False)
    states = {r["state"] for r in result.trials}
    assert len(result.trials) == 4 and states == {"fail", "complete"}
    assert json.loads(next(r for r in result.trials if r["state"] == "complete")["params"])["model_args"] == {
        "channels": [8], "kernel_sizes": [3]}
