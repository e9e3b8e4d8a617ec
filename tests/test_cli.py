import subprocess
import sys
from pathlib import Path

from recog.cli import main


def test_help_does_not_import_torch_and_python_dash_m_works() -> None:
    code = "import sys, recog.cli; recog.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    for module in ("recog.cli", "recog"):
        proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "train" in proc.stdout and "predict" in proc.stdout


def test_train_help_describes_each_option_without_the_sources(tmp_path: Path) -> None:
    # the help text lives in the config fields' metadata: no inspect.getsource, so a wheel without
    # sources (or python -OO) still describes every option
    code = ("import inspect, sys, recog.cli\n"
            "inspect.getsource = None\n"
            "sys.argv = ['recog', 'train', '--help']\n"
            "recog.cli.main()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "random horizontal flip" in text and "multi-label: auto weighs each label" in text


def test_unknown_option_names_the_closest_flag(capsys) -> None:
    assert main(["train", "--batchsize", "3"]) == 2
    assert "did you mean --batch-size?" in capsys.readouterr().err


def test_bad_values_are_reported_without_traceback(capsys, tmp_path: Path) -> None:
    assert main(["train", "--optimizer", "rmsprop", "--project", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: optimizer must be one of") and "Traceback" not in err
    assert main(["train", "--data", str(tmp_path / "nowhere")]) == 2
    assert "neither a dataset name" in capsys.readouterr().err
    assert main(["train", "--model-args", "widths"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_models_lists_parameters_and_macs_for_the_dataset(capsys) -> None:
    assert main(["models", "--data", "cifar10"]) == 0
    out = capsys.readouterr().out
    assert "input 3x32x32, 10 classes" in out
    line = next(x for x in out.splitlines() if x.startswith("seednet"))
    assert line.split()[1:] == ["62,006", "651,720"]
    assert main(["models", "tv:resnet1*", "--data", "digits"]) == 0
    assert "tv:resnet18" in capsys.readouterr().out


def test_config_file_and_model_args_from_the_cli(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: digits\nmodel: airnet\nepochs: 1\nverbose: false\n")
    assert main(["train", "--config", str(cfg), "--model-args", "widths=[8,16,16]", "stem_width=8",
                 "--project", str(tmp_path)]) == 0
    saved = (tmp_path / "train" / "config.yaml").read_text()
    assert "widths:\n  - 8\n  - 16\n  - 16" in saved or "widths: [8, 16, 16]" in saved
    assert "epochs: 1" in saved


def test_progress_is_one_line_per_epoch_when_the_output_is_not_a_terminal(tmp_path: Path, capsys) -> None:
    def train(*flags: str) -> str:
        assert main(["train", "--model", "seednet", "--epochs", "2", "--project", str(tmp_path), *flags]) == 0
        return capsys.readouterr().err

    lines = train()  # stderr is captured here, not a terminal: auto means lines
    assert "\r" not in lines and "epoch 1/2: train_loss" in lines and "epoch 2/2: train_loss" in lines
    assert "img/s" in lines
    assert "\r" in train("--progress", "bar")  # forced: the bar redraws its line
    quiet = train("--progress", "none")
    assert "epoch 1/2" not in quiet and "\r" not in quiet
    assert main(["train", "--progress", "sometimes"]) == 2


def test_train_help_shows_the_common_options_first(capsys) -> None:
    import pytest

    from recog.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    head = capsys.readouterr().out.splitlines()[:40]
    text = "\n".join(head)
    for flag in ("--data DATA", "--model MODEL", "--epochs EPOCHS", "--time-budget"):
        assert flag in text, flag  # with its description, not only in the usage line
    assert len(head[0]) < 200  # the usage is one line, not every flag
