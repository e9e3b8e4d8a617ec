"""One vocabulary: ``lr: auto`` in YAML as on the command line, recog tune takes recog train's flags,
durations read one way everywhere, one name for the output, ``--batch-size`` on predict."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import recog
from recog.cli import build_parser as parser, main
from recog.errors import ConfigError


def test_lr_auto_in_a_yaml_file_runs_the_range_test_and_trains_with_a_number(tmp_path: Path, capsys) -> None:
    config = tmp_path / "auto.yaml"
    config.write_text(yaml.safe_dump({"data": "digits", "model": "seednet", "epochs": 1, "lr": "auto"}))
    run = recog.train(config, project=str(tmp_path / "runs"))
    assert "--lr auto: training with lr" in capsys.readouterr().err
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    assert isinstance(saved["lr"], float) and saved["lr"] > 0 and saved["lr"] == run.config.lr
    assert (tmp_path / "runs" / "lr-find" / "lr_find.csv").is_file()  # the range test's own folder


def test_a_flag_lr_wins_over_lr_auto_in_the_file(tmp_path: Path) -> None:
    config = tmp_path / "auto.yaml"
    config.write_text(yaml.safe_dump({"data": "digits", "model": "seednet", "epochs": 1, "lr": "auto"}))
    run = recog.train(config, lr=0.02, project=str(tmp_path / "runs"), verbose=False)
    assert run.config.lr == 0.02 and not (tmp_path / "runs" / "lr-find").exists()


def test_recog_tune_takes_recog_trains_flags_and_lr_auto(tmp_path: Path, capsys) -> None:
    pytest.importorskip("optuna")
    code = main(["tune", "--data", "digits", "--model", "seednet", "--epochs", "1", "--trials", "1",
                 "--project", str(tmp_path), "--lr", "auto", "--label-smoothing", "0.1", "--batch-size", "128",
                 "--space", str(_space(tmp_path))])
    assert code == 0
    err = capsys.readouterr().err
    assert "--lr auto: training with lr" in err
    trial = yaml.safe_load(next((tmp_path / "tune").glob("*/trials/trial-0000/config.yaml")).read_text())
    assert trial["label_smoothing"] == 0.1 and trial["batch_size"] == 128  # the generated flags reach the trial
    assert isinstance(trial["lr"], float)  # the range test's number, found once before the study


def _space(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"weight_decay": {"float": [1e-5, 1e-3], "log": True}}))
    return path


def test_a_flag_and_set_for_one_option_are_refused(tmp_path: Path, capsys) -> None:
    assert main(["tune", "--project", str(tmp_path), "--label-smoothing", "0.1", "--set", "label_smoothing=0.2"]) == 2
    assert "label_smoothing given twice" in capsys.readouterr().err


def test_durations_read_one_way_in_serve_and_tune() -> None:
    from recog.config import parse_duration

    args = parser().parse_args(["serve", "run", "--timeout", "1m"])
    assert parse_duration(args.timeout, "--timeout") == 60
    assert parse_duration(parser().parse_args(["serve", "run", "--timeout", "45"]).timeout) == 45  # a number: s
    with pytest.raises(ConfigError, match="--timeout: cannot read 'soon'"):
        parse_duration("soon", "--timeout")


def test_out_is_the_one_name_for_where_a_command_writes_and_output_stays_an_alias() -> None:
    assert parser().parse_args(["export", "run", "--out", "m.onnx"]).out == "m.onnx"
    assert parser().parse_args(["export", "run", "--output", "m.onnx"]).out == "m.onnx"
    assert parser().parse_args(["eval", "run", "--out", "d"]).out == "d"


def test_predict_takes_a_batch_size_and_refuses_a_bad_one(digits_run, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    files = []
    for i in range(5):
        f = tmp_path / f"{i}.png"
        Image.fromarray(np.round(load_digits().images[i] * 255 / 16).astype(np.uint8)).save(f)
        files.append(f)
    one = recog.predict(digits_run.path, files, batch_size=1, precision="fp32")
    five = recog.predict(digits_run.path, files, batch_size=5, precision="fp32")
    assert [r["top"][0]["class"] for r in one] == [r["top"][0]["class"] for r in five]
    for a, b in zip(one, five):
        assert a["top"][0]["prob"] == pytest.approx(b["top"][0]["prob"], abs=1e-5)
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        recog.predict(digits_run.path, files, batch_size=0)
    assert parser().parse_args(["predict", "run", "x.png", "--batch-size", "8"]).batch_size == 8
