"""Training end to end on the bundled digits: the run folder, resume, NaN, early stopping, options."""

import csv
import re
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import recog
from recog.config import make_config
from recog.weights import read_weights
from recog.errors import ConfigError, TrainingError

QUICK = {"data": "digits", "model": "airnet_small", "verbose": False}


def test_quick_start_cli_reaches_97_percent(tmp_path: Path) -> None:
    # its time (15-20 s on 2 cores) is measured by benchmarks/quick_start.py, not asserted here
    proc = subprocess.run([sys.executable, "-m", "recog", "train"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "run folder: runs/train" in proc.stdout
    report = json.loads((tmp_path / "runs/train/report.json").read_text())
    assert report["accuracy"] >= 0.97
    assert report["num_images"] == 359 and report["split"] == "test"
    assert "img/s" in proc.stderr and "plan: small recipe: airnet" in proc.stderr
    assert re.search(r"epoch (\d+)/\1:", proc.stderr)  # as many epochs as planned


def test_run_folder_holds_config_metrics_curves_weights_and_report(digits_run) -> None:
    run = digits_run.path
    for name in ("config.yaml", "metrics.csv", "curves.png", "report.json", "report.md", "confusion.csv",
                 "confusion.png", "weights/best.safetensors", "weights/last.safetensors", "weights/state.pt"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 6
    assert set(rows[0]) >= {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}
    assert all(0.0 <= float(r["val_acc"]) <= 1.0 for r in rows)
    report = json.loads((run / "report.json").read_text())
    for key in ("accuracy", "top5_accuracy", "macro_f1", "weighted_f1", "per_class", "confusion_matrix",
                "num_images", "classes"):
        assert key in report
    assert report["per_class"][0].keys() >= {"class", "precision", "recall", "f1", "support"}
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # weights carry classes and preprocessing
    _, meta = read_weights(run / "weights/best.safetensors")
    assert meta["classes"] == [str(i) for i in range(10)]
    assert (meta["channels"], meta["image_size"], meta["model"]) == (1, 8, "airnet_small")
    assert len(meta["mean"]) == len(meta["std"]) == 1
    # the saved config is reusable as --config and gives the same config back
    again = make_config(run / "config.yaml")
    assert again == digits_run.config
    assert digits_run.report["accuracy"] > 0.9


def test_second_run_gets_a_new_numbered_folder(tmp_path: Path) -> None:
    a = recog.train(**QUICK, epochs=1, project=str(tmp_path))
    b = recog.train(**QUICK, epochs=1, project=str(tmp_path))
    assert (a.path.name, b.path.name) == ("train", "train-2")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "weights" / "last.safetensors"))


def test_interrupt_and_resume_gives_the_same_weights_as_straight_training(tmp_path: Path) -> None:
    opts = dict(QUICK, epochs=4, deterministic=True, flip=True, translate=1, cutout=2, seed=3, lookahead=True,
                project=str(tmp_path))
    straight = recog.train(**opts, name="straight")

    def interrupt_after_two(row: dict) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recog.train(**opts, name="resumed", on_epoch_end=interrupt_after_two)
    run_dir = tmp_path / "resumed"
    assert len(list(csv.DictReader((run_dir / "metrics.csv").open()))) == 2
    resumed = recog.train(resume=run_dir, verbose=False)
    assert resumed.path == run_dir
    a, b = _weights(straight.path), _weights(run_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["epoch"] for r in resumed.metrics] == [1, 2, 3, 4]
    assert resumed.metrics[-1]["val_loss"] == pytest.approx(straight.metrics[-1]["val_loss"])


def test_resume_refuses_changes_and_finished_runs(digits_run) -> None:
    with pytest.raises(ConfigError, match="cannot change epochs"):
        recog.train(resume=digits_run.path, epochs=10)
    with pytest.raises(ConfigError, match="already finished"):
        recog.train(resume=digits_run.path, verbose=False)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_nan_loss_stops_with_epoch_and_step_and_keeps_saved_weights(tmp_path: Path) -> None:
    saved: dict[str, str] = {}

    def poison(row: dict) -> None:
        run = tmp_path / "nan"
        for name in ("best", "last"):
            saved[name] = _digest(run / "weights" / f"{name}.safetensors")
        with torch.no_grad():
            for p in row["model"].parameters():  # the hook gets the model being trained
                p.fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"epoch 2, step 1") as info:
        recog.train(**QUICK, epochs=3, project=str(tmp_path), name="nan", on_epoch_end=poison)
    assert "nan" in str(info.value).lower()
    for name in ("best", "last"):
        path = tmp_path / "nan" / "weights" / f"{name}.safetensors"
        assert _digest(path) == saved[name]
        assert all(torch.isfinite(t).all() for t in load_file(str(path)).values())


def test_early_stopping_keeps_the_best_weights(tmp_path: Path) -> None:
    # lr 0: the weights never move, so val accuracy cannot beat epoch 1 and patience 2 stops at epoch 3
    run = recog.train(**QUICK, epochs=10, patience=2, project=str(tmp_path), schedule="constant", lr=0.0)
    assert len(run.metrics) == 3
    best = load_file(str(run.path / "weights/best.safetensors"))
    last = load_file(str(run.path / "weights/last.safetensors"))
    assert all(torch.equal(best[k], last[k]) for k in best if "running" not in k and "num_batches" not in k)


def test_early_stopping_stops_on_a_plateau_and_reports_best_epoch(tmp_path: Path) -> None:
    run = recog.train(**QUICK, epochs=30, patience=3, project=str(tmp_path), lr=0.2, schedule="constant")
    assert len(run.metrics) < 30
    best_epoch = max(run.metrics, key=lambda r: r["val_acc"])["epoch"]
    assert len(run.metrics) - best_epoch == 3  # stopped after 3 epochs without a new best


@pytest.mark.parametrize(
    "options",
    [
        {"optimizer": "adamw", "schedule": "cosine", "warmup_epochs": 0.5, "weight_decay": 0.05},
        {"l1": 1e-4, "label_smoothing": 0.1, "grad_clip": 1.0, "schedule": "linear", "nesterov": False},
        {"precision": "bf16", "channels_last": True},
        {"model": "seednet", "optimizer": "adamw", "lr": 0.01},
        {"model": "resnet18", "batch_size": 128},
    ],
    ids=["adamw-cosine", "l1-smoothing-clip", "bf16-channels-last", "seednet", "resnet18"],
)
def test_training_options_run_and_learn(tmp_path: Path, options: dict) -> None:
    run = recog.train(**{**QUICK, **options}, epochs=3, project=str(tmp_path))
    assert run.metrics[-1]["train_loss"] < run.metrics[0]["train_loss"]
    assert run.report["accuracy"] > 0.5


def test_l1_penalty_shrinks_weights(tmp_path: Path) -> None:
    plain = recog.train(**QUICK, epochs=3, project=str(tmp_path), weight_decay=0.0)
    l1 = recog.train(**QUICK, epochs=3, project=str(tmp_path), weight_decay=0.0, l1=1e-3)

    def total(run) -> float:  # noqa: ANN001
        return sum(p.abs().sum().item() for p in run.model.parameters() if p.ndim >= 2)

    assert total(l1) < 0.8 * total(plain)


def test_tensorboard_logs_when_asked(tmp_path: Path) -> None:
    run = recog.train(**QUICK, epochs=1, project=str(tmp_path), tensorboard=True)
    assert list((run.path / "tensorboard").glob("events.out.tfevents.*"))


def test_initial_weights_from_a_file_with_a_new_head(tmp_path: Path, digits_run) -> None:
    run = recog.train(**QUICK, epochs=1, project=str(tmp_path), weights=str(digits_run.best_weights))
    assert run.report["accuracy"] > 0.9  # started from trained weights


def test_compiled_model_trains_and_saves_plain_weights(tmp_path: Path) -> None:
    run = recog.train(**QUICK, epochs=1, compile=True, project=str(tmp_path))
    state, meta = read_weights(run.best_weights)
    assert not any(k.startswith("_orig_mod") for k in state)
    assert recog.load(run.path).classes == meta["classes"]
    assert run.metrics[0]["train_loss"] < 2.3


def test_weights_that_blow_up_are_never_saved_and_broken_weights_are_an_error(tmp_path: Path, digits_run) -> None:
    # one step per epoch at lr 1e38: the training loss of that step is finite, the weights after it are not
    # (before: val_acc 0.098 counted as an improvement and best/last held NaN weights)
    with pytest.raises(TrainingError, match="became non-finite in epoch 1"):
        recog.train(**QUICK, epochs=3, batch_size=2048, lr=1e38, schedule="constant", project=str(tmp_path),
                    name="blown")
    assert not (tmp_path / "blown" / "weights" / "best.safetensors").exists()
    assert not (tmp_path / "blown" / "weights" / "last.safetensors").exists()
    # a weights file with NaN in it (made by hand): eval and predict refuse it instead of reporting chance
    from safetensors.torch import save_file

    state, meta = read_weights(digits_run.best_weights)
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    broken = tmp_path / "broken.safetensors"
    save_file(state, str(broken), metadata={"recog": json.dumps(meta)})
    with pytest.raises(recog.api.WeightsError, match="non-finite outputs"):
        recog.evaluate(broken, data="digits", out=tmp_path / "e", verbose=False)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (8, 8)).save(image)
    with pytest.raises(recog.api.WeightsError, match="non-finite outputs"):
        recog.predict(broken, image)
